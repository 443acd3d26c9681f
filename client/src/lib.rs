//! The kit's client side: the OSTEP-style [`fetch`] client, the [`bench`](mod@bench)
//! load generator, the [`grade`] black-box grader, and the [`suite`] behind
//! `./benchmark.sh` (with its [`versus`] and [`techniques`] tables), and
//! [`timeline`]s of what each client saw or a server did.

#![deny(missing_docs)]

pub mod bench;
pub mod chart;
pub mod child;
pub mod cost;
pub mod fetch;
pub mod grade;
pub mod json;
pub mod peers;
pub mod suite;
pub mod techniques;
pub mod timeline;
pub mod verdict;
pub mod versus;
