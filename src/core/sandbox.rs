//! The sandbox: turn a requested path into an open regular file under the
//! root, or refuse.
//!
//! Two layers, so that neither has to be perfect alone:
//!
//! 1. **Lexical** ([`Root::normalize`]), before any syscall: absolute paths,
//!    `..` anywhere, NUL and control bytes, and (unless allowed) hidden
//!    components are refused; `.` and repeated `/` are skipped.
//! 2. **Kernel** ([`Root::open_file`]): the path is resolved *beneath* the
//!    root's directory fd, so a symlink may wander inside the root but never
//!    out of it. On Linux 5.6+ the kernel does it (`openat2(RESOLVE_BENEATH
//!    | RESOLVE_NO_MAGICLINKS)`); everywhere else (macOS, FreeBSD, older
//!    Linux, valgrind) [`open_walking`] does the same by hand: one component
//!    at a time with `O_NOFOLLOW`, reading each symlink it meets and
//!    following it only while it stays beneath the root. Both follow the
//!    same rules, and the tests run the same table against both.
//!
//! Files are opened `O_NONBLOCK` (opening a FIFO must not hang the server)
//! and then `fstat`ed: only regular files are served, and their size at that
//! moment is all that will ever be sent.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::refusal::Refusal;

/// Why the root directory itself could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// The root could not be opened (missing, unreadable).
    #[error("cannot open root {path}: {source}")]
    Open {
        /// The directory given with `--root`.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// The root does not exist (relative paths are taken from the working directory).
    #[error("root {path} does not exist in {cwd} (run from the directory that holds it, or give a full path: --root /path/to/dir)")]
    Missing {
        /// The directory given with `--root`.
        path: PathBuf,
        /// The working directory a relative root was looked for in.
        cwd: String,
    },
    /// The root exists but is not a directory.
    #[error("root {0} is not a directory (give --root a directory, e.g. --root fixtures)")]
    NotADirectory(PathBuf),
}

/// How files are opened beneath the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` (Linux 5.6+).
    Openat2,
    /// Component by component with `O_NOFOLLOW`, symlinks followed by hand
    /// while they stay beneath the root (every other system).
    BeneathWalk,
}

/// The directory files are served from, opened once.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    allow_hidden: bool,
    resolver: Resolver,
}

/// A sandboxed regular file, open for reading, with its size at open time.
#[derive(Debug)]
pub struct OpenFile {
    /// The open file.
    pub file: File,
    /// Its size per `fstat`; no more than this is ever sent.
    pub len: u64,
    /// The normalized path, also the cache key.
    pub key: Vec<u8>,
    /// Its modification time per `fstat` (HTTP's `Last-Modified`).
    pub modified: Option<std::time::SystemTime>,
}

impl Root {
    /// Opens `path` as the root, choosing `openat2` when the kernel has it.
    pub fn open(path: &Path, allow_hidden: bool) -> Result<Root, RootError> {
        let mut root = Root::open_with(path, allow_hidden, Resolver::Openat2)?;
        if !openat2::works(&root.dir) {
            root.resolver = Resolver::BeneathWalk;
        }
        Ok(root)
    }

    /// Opens `path` as the root with a given resolver (tests use this to
    /// exercise the fallback on kernels that have `openat2`).
    pub fn open_with(path: &Path, allow_hidden: bool, resolver: Resolver) -> Result<Root, RootError> {
        let dir = rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(
            |errno| match errno {
                rustix::io::Errno::NOTDIR => RootError::NotADirectory(path.to_owned()),
                rustix::io::Errno::NOENT => RootError::Missing {
                    path: path.to_owned(),
                    cwd: std::env::current_dir()
                        .map_or_else(|_| "the working directory".into(), |d| d.display().to_string()),
                },
                errno => RootError::Open { path: path.to_owned(), source: errno.into() },
            },
        )?;
        Ok(Root { dir, allow_hidden, resolver })
    }

    /// The lexical check: returns the normalized relative path (components
    /// joined by `/`, empty for the root itself) or a refusal.
    pub fn normalize(&self, requested: &[u8]) -> Result<Vec<u8>, Refusal> {
        if requested.iter().any(|&b| b < 0x20 || b == 0x7f) {
            return Err(Refusal::BadRequest);
        }
        if requested.first() == Some(&b'/') {
            return Err(Refusal::Forbidden);
        }
        let mut normalized = Vec::with_capacity(requested.len());
        for component in requested.split(|&b| b == b'/') {
            match component {
                b"" | b"." => continue,
                b".." => return Err(Refusal::Forbidden),
                [b'.', ..] if !self.allow_hidden => return Err(Refusal::Forbidden),
                _ => {}
            }
            if !normalized.is_empty() {
                normalized.push(b'/');
            }
            normalized.extend_from_slice(component);
        }
        // `file.txt/` names a directory that does not exist: keep the slash
        // so the kernel answers ENOTDIR (404) instead of serving the file.
        if requested.ends_with(b"/") && !normalized.is_empty() {
            normalized.push(b'/');
        }
        Ok(normalized)
    }

    /// Opens an already normalized path beneath the root.
    pub fn open_file(&self, normalized: &[u8]) -> Result<OpenFile, Refusal> {
        let path = if normalized.is_empty() { OsStr::new(".") } else { OsStr::from_bytes(normalized) };
        let fd = match self.resolver {
            Resolver::Openat2 => openat2::open_beneath(&self.dir, path, read_flags()),
            Resolver::BeneathWalk => open_walking(&self.dir, normalized),
        }
        .map_err(|errno| Refusal::from(&io::Error::from(errno)))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|err| Refusal::from(&err))?;
        if !meta.is_file() {
            return Err(Refusal::Forbidden);
        }
        Ok(OpenFile { file, len: meta.len(), key: normalized.to_vec(), modified: meta.modified().ok() })
    }

    /// Whether an already normalized path names a directory beneath the
    /// root (resolved by the same rules as [`Root::open_file`]).
    pub fn is_directory(&self, normalized: &[u8]) -> bool {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        match self.resolver {
            Resolver::Openat2 => openat2::open_beneath(&self.dir, OsStr::from_bytes(normalized), flags).is_ok(),
            // A trailing slash makes the walk insist on a directory.
            Resolver::BeneathWalk => open_walking(&self.dir, &[normalized, b"/"].concat()).is_ok(),
        }
    }

    /// Both checks: the requested path to an open regular file, or a refusal.
    #[cfg(test)]
    fn resolve(&self, requested: &[u8]) -> Result<OpenFile, Refusal> {
        self.open_file(&self.normalize(requested)?)
    }
}

/// Flags every served file is opened with: read-only, never blocking on a
/// FIFO, not inherited by children, never becoming a controlling terminal.
fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// The kernel's own resolution beneath a directory (Linux 5.6+).
#[cfg(target_os = "linux")]
mod openat2 {
    use std::ffi::OsStr;
    use std::os::fd::OwnedFd;

    use rustix::fs::{Mode, OFlags, ResolveFlags};

    /// Opens `path` beneath `dir`; an escape fails with `EXDEV` (403).
    ///
    /// `EAGAIN` means a rename anywhere on the system raced the check of a
    /// `..` (openat2(2): "the caller may choose to retry"): a busy machine
    /// makes it happen, so a few tries before it is an error (500).
    pub fn open_beneath(dir: &OwnedFd, path: &OsStr, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(dir, path, flags, Mode::empty(), resolve) {
                Err(rustix::io::Errno::AGAIN) if tries < 8 => tries += 1,
                done => return done,
            }
        }
    }

    /// Whether this kernel (or sandbox, or valgrind) accepts `openat2`.
    pub fn works(dir: &OwnedFd) -> bool {
        open_beneath(dir, OsStr::new("."), OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC).is_ok()
    }
}

/// Other systems have no `openat2`: [`open_walking`] resolves instead.
#[cfg(not(target_os = "linux"))]
mod openat2 {
    use std::ffi::OsStr;
    use std::os::fd::OwnedFd;

    use rustix::fs::OFlags;

    pub fn open_beneath(_dir: &OwnedFd, _path: &OsStr, _flags: OFlags) -> rustix::io::Result<OwnedFd> {
        Err(rustix::io::Errno::NOSYS)
    }

    pub fn works(_dir: &OwnedFd) -> bool {
        false
    }
}

/// Most symlinks followed in one resolution, as the kernel's own limit
/// (`ELOOP` past it).
const MAX_SYMLINKS: usize = 40;

/// Resolves `normalized` beneath `root` by hand, with the rules of
/// `RESOLVE_BENEATH`: every component is opened with `O_NOFOLLOW`; a
/// symlink is read and its target resolved in its place, relative to the
/// directory holding it; `..` (which only a symlink's target can contain
/// here) goes up a directory, and going above the root is an escape; an
/// absolute target is an escape. Escapes fail with `EXDEV` (403), like
/// `openat2`'s.
fn open_walking(root: &OwnedFd, normalized: &[u8]) -> rustix::io::Result<OwnedFd> {
    use rustix::io::Errno;
    // A trailing slash insists on a directory (which is then refused as one).
    let (path, must_be_dir) = match normalized.strip_suffix(b"/") {
        Some(stripped) => (stripped, OFlags::DIRECTORY),
        None => (normalized, OFlags::empty()),
    };
    // Components still to resolve, next first; the directories walked so far.
    let mut todo: Vec<Vec<u8>> = path.split(|&b| b == b'/').rev().map(<[u8]>::to_vec).collect();
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0;
    while let Some(component) = todo.pop() {
        let at = dirs.last().unwrap_or(root);
        match component.as_slice() {
            b"" | b"." => {
                if todo.is_empty() {
                    // The path ends at a directory: open it (to be refused as one).
                    return rustix::fs::openat(at, ".", read_flags() | must_be_dir, Mode::empty());
                }
                continue;
            }
            b".." => {
                if dirs.pop().is_none() {
                    return Err(Errno::XDEV); // above the root
                }
                if todo.is_empty() {
                    let at = dirs.last().unwrap_or(root);
                    return rustix::fs::openat(at, ".", read_flags() | must_be_dir, Mode::empty());
                }
                continue;
            }
            _ => {}
        }
        let name = OsStr::from_bytes(&component);
        let last = todo.is_empty();
        let flags = if last {
            read_flags() | OFlags::NOFOLLOW | must_be_dir
        } else {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        };
        match rustix::fs::openat(at, name, flags, Mode::empty()) {
            Ok(fd) if last => return Ok(fd),
            Ok(fd) => dirs.push(fd),
            // O_NOFOLLOW refuses a symlink with ELOOP (or, with
            // O_DIRECTORY, ENOTDIR): read it and resolve its target instead.
            Err(errno @ (Errno::LOOP | Errno::NOTDIR | Errno::MLINK)) => {
                let target = match rustix::fs::readlinkat(at, name, Vec::new()) {
                    Ok(target) => target.into_bytes(),
                    Err(_) => return Err(errno), // not a symlink after all
                };
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(Errno::LOOP);
                }
                if target.first() == Some(&b'/') {
                    return Err(Errno::XDEV); // absolute: refused, as RESOLVE_BENEATH does
                }
                if last && !must_be_dir.is_empty() {
                    todo.push(Vec::new()); // keep insisting on a directory
                }
                todo.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
            }
            Err(errno) => return Err(errno),
        }
    }
    // An empty path names the root itself.
    rustix::fs::openat(root, ".", read_flags() | must_be_dir, Mode::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> (tempfile::TempDir, tempfile::TempDir) {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::fs::write(root.path().join("sub/file.txt"), b"hello").unwrap();
        std::fs::write(root.path().join(".hidden"), b"h").unwrap();
        symlink("sub/file.txt", root.path().join("inner-link")).unwrap();
        symlink(outside.path().join("secret"), root.path().join("outer-link")).unwrap();
        symlink("../../", root.path().join("sub/up")).unwrap();
        // mkfifo(1) rather than the call: rustix has no mkfifoat on macOS.
        let made = std::process::Command::new("mkfifo").arg(root.path().join("fifo")).status().unwrap();
        assert!(made.success(), "mkfifo");
        (root, outside)
    }

    fn refusal(root: &Root, path: &str) -> Option<Refusal> {
        root.resolve(path.as_bytes()).err()
    }

    #[test]
    fn normalization_skips_dots_and_slashes_and_refuses_escapes() {
        let (dir, _outside) = tree();
        let root = Root::open(dir.path(), false).unwrap();
        assert_eq!(root.normalize(b"./sub//file.txt").unwrap(), b"sub/file.txt");
        assert_eq!(root.normalize(b".").unwrap(), b"");
        assert_eq!(root.normalize(b"sub/").unwrap(), b"sub/");
        assert_eq!(refusal(&root, "sub/file.txt/"), Some(Refusal::NotFound));
        assert_eq!(refusal(&root, "sub/"), Some(Refusal::Forbidden));
        for escape in ["../x", "sub/../../x", "sub/..", "/etc/passwd", ".hidden", "sub/.git/config"] {
            assert_eq!(root.normalize(escape.as_bytes()), Err(Refusal::Forbidden), "{escape}");
        }
        assert_eq!(root.normalize(b"a\0b"), Err(Refusal::BadRequest));
        assert_eq!(root.normalize(b"a\x1bb"), Err(Refusal::BadRequest));
        let permissive = Root::open(dir.path(), true).unwrap();
        assert_eq!(permissive.resolve(b".hidden").unwrap().len, 1);
    }

    /// The same rules, whichever resolver: checked against both.
    fn resolvers() -> Vec<Resolver> {
        let probe = tempfile::tempdir().unwrap();
        let has_openat2 = openat2::works(&Root::open_with(probe.path(), false, Resolver::Openat2).unwrap().dir);
        if has_openat2 {
            vec![Resolver::Openat2, Resolver::BeneathWalk]
        } else {
            vec![Resolver::BeneathWalk]
        }
    }

    #[test]
    fn both_resolvers_follow_links_inside_the_root_and_refuse_links_out() {
        let (dir, _outside) = tree();
        // Links that wander inside the root, and some that leave it late.
        symlink("../sub/file.txt", dir.path().join("sub/sibling-link")).unwrap();
        symlink("sub", dir.path().join("dir-link")).unwrap();
        symlink("loop-b", dir.path().join("loop-a")).unwrap();
        symlink("loop-a", dir.path().join("loop-b")).unwrap();
        symlink("sub/../../", dir.path().join("late-escape")).unwrap();
        symlink("/etc", dir.path().join("absolute-link")).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(resolvers()[0], Resolver::Openat2, "this kernel has openat2");
        }
        for resolver in resolvers() {
            let root = Root::open_with(dir.path(), false, resolver).unwrap();
            let served = |path: &str| root.resolve(path.as_bytes()).map(|f| (f.len, f.key));
            assert_eq!(served("sub/file.txt"), Ok((5, b"sub/file.txt".to_vec())), "{resolver:?}");
            assert_eq!(served("inner-link"), Ok((5, b"inner-link".to_vec())), "{resolver:?}");
            assert_eq!(served("sub/sibling-link"), Ok((5, b"sub/sibling-link".to_vec())), "{resolver:?}");
            assert_eq!(served("dir-link/file.txt"), Ok((5, b"dir-link/file.txt".to_vec())), "{resolver:?}");
            for (path, expected) in [
                ("outer-link", Refusal::Forbidden),
                ("sub/up/etc/passwd", Refusal::Forbidden),
                ("late-escape/etc/passwd", Refusal::Forbidden),
                ("absolute-link/passwd", Refusal::Forbidden),
                ("loop-a", Refusal::Forbidden),
                ("fifo", Refusal::Forbidden),
                ("sub", Refusal::Forbidden),
                ("dir-link", Refusal::Forbidden),
                ("dir-link/", Refusal::Forbidden),
                ("", Refusal::Forbidden),
                ("sub/", Refusal::Forbidden),
                ("missing", Refusal::NotFound),
                ("sub/file.txt/x", Refusal::NotFound),
                ("sub/file.txt/", Refusal::NotFound),
                ("inner-link/", Refusal::NotFound),
            ] {
                assert_eq!(refusal(&root, path), Some(expected), "{resolver:?}: {path:?}");
            }
        }
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_refused_with_a_hint() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = Root::open(file.path(), false).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        let err = Root::open(Path::new("no/such/dir"), false).unwrap_err();
        assert!(err.to_string().starts_with("root no/such/dir does not exist in /"), "{err}");
        assert!(err.to_string().contains("--root /path/to/dir"), "{err}");
    }
}
