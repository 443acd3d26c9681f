//! The line protocol: one path per line, `OK <size>\n<bytes>` or
//! `ERR <code> <reason>\n` back.

use std::io::Write;

use super::conditional::Selection;
use super::{BodyFollows, Framing, Malformed, ParseLimits, Parsed, Request, Response};
use crate::refusal::Refusal;

/// Finds one `\n`-terminated line at the front of `pending`.
pub(super) fn parse(pending: &[u8], limits: &ParseLimits) -> Option<Parsed> {
    let refuse = |refusal, consumed| {
        Some(Parsed {
            request: Err(Malformed { framing: Framing::Line, refusal }),
            consumed,
            body: BodyFollows::Nothing,
        })
    };
    let Some(newline) = pending.iter().position(|&b| b == b'\n') else {
        // No newline yet: wait for more, unless the line is already too long.
        // A `\r` at the end may be the first half of `\r\n`: not counted yet.
        let counted = pending.strip_suffix(b"\r").unwrap_or(pending).len();
        return if counted > limits.max_line_bytes { refuse(Refusal::LineTooLong, pending.len()) } else { None };
    };
    let mut line = &pending[..newline];
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    if line.len() > limits.max_line_bytes {
        return refuse(Refusal::LineTooLong, newline + 1);
    }
    if line.is_empty() {
        return refuse(Refusal::BadRequest, newline + 1);
    }
    Some(Parsed { request: Ok(Request::line(line.to_vec())), consumed: newline + 1, body: BodyFollows::Nothing })
}

/// Appends the head that precedes `response`'s body (if any) to `out`;
/// `selection` is what an HTTP request's conditions chose (the line
/// protocol has none: always [`Selection::Full`]).
pub fn encode_head(framing: &Framing, response: &Response, selection: Selection, out: &mut Vec<u8>) {
    match framing {
        Framing::Line => match response {
            Response::Content(body) => {
                let _ = writeln!(out, "OK {}", body.len());
            }
            Response::Refused(refusal) => {
                let _ = writeln!(out, "ERR {} {}", refusal.code(), refusal);
            }
            // The line protocol has no redirects: a directory is refused.
            Response::Moved(_) => {
                let refusal = Refusal::Forbidden;
                let _ = writeln!(out, "ERR {} {}", refusal.code(), refusal);
            }
        },
        Framing::Http(http) => super::http::encode_head(http, response, selection, out),
    }
}
