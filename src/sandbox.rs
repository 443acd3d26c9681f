//! The sandbox: turn a requested path into an open regular file under the
//! root, or refuse.
//!
//! Two layers, so that neither has to be perfect alone:
//!
//! 1. **Lexical** ([`Root::normalize`]), before any syscall: absolute paths,
//!    `..` anywhere, NUL and control bytes, and (unless allowed) hidden
//!    components are refused; `.` and repeated `/` are skipped.
//! 2. **Kernel** ([`Root::open_file`]): `openat2(RESOLVE_BENEATH |
//!    RESOLVE_NO_MAGICLINKS)` relative to the root's directory fd, so a
//!    symlink may wander inside the root but never out of it. Where `openat2`
//!    is missing, the path is walked one component at a time with
//!    `O_NOFOLLOW`, refusing every symlink.
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

use rustix::fs::{Mode, OFlags, ResolveFlags};

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
    /// `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` (Linux 5.6+):
    /// symlinks inside the root are followed, escaping ones refused.
    Openat2,
    /// Component by component with `O_NOFOLLOW`: every symlink is refused.
    NoFollowWalk,
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
        if open_beneath(&root.dir, OsStr::new("."), OFlags::DIRECTORY).is_err() {
            root.resolver = Resolver::NoFollowWalk;
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

    /// The resolver in use.
    #[cfg(test)]
    fn resolver(&self) -> Resolver {
        self.resolver
    }

    /// The lexical check: returns the normalized relative path (components
    /// joined by `/`, empty for the root itself) or a refusal.
    // handout: stage 3: refuse control bytes (400), a leading / and any `..` or hidden component (403); skip `.` and empty components; keep a trailing /; read docs/guide/04-serving-files-safely.md
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
            Resolver::Openat2 => open_beneath(&self.dir, path, OFlags::empty()),
            Resolver::NoFollowWalk => open_walking(&self.dir, normalized),
        }
        .map_err(|errno| Refusal::from(&io::Error::from(errno)))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|err| Refusal::from(&err))?;
        if !meta.is_file() {
            return Err(Refusal::Forbidden);
        }
        Ok(OpenFile { file, len: meta.len(), key: normalized.to_vec(), modified: meta.modified().ok() })
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

fn open_beneath(dir: &OwnedFd, path: &OsStr, extra: OFlags) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat2(
        dir,
        path,
        read_flags() | extra,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
}

/// The fallback: each directory opened with `O_NOFOLLOW | O_DIRECTORY`, the
/// last component with `O_NOFOLLOW`, so any symlink fails with `ELOOP` (403).
fn open_walking(root: &OwnedFd, normalized: &[u8]) -> rustix::io::Result<OwnedFd> {
    if normalized.is_empty() {
        return rustix::fs::openat(root, ".", read_flags(), Mode::empty());
    }
    // A trailing slash insists on a directory (which is then refused as one).
    let (normalized, must_be_dir) = match normalized.strip_suffix(b"/") {
        Some(stripped) => (stripped, OFlags::DIRECTORY),
        None => (normalized, OFlags::empty()),
    };
    let mut components = normalized.split(|&b| b == b'/').peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(component) = components.next() {
        let at = current.as_ref().unwrap_or(root);
        let name = OsStr::from_bytes(component);
        let flags = if components.peek().is_some() {
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
        } else {
            read_flags() | OFlags::NOFOLLOW | must_be_dir
        };
        let opened = rustix::fs::openat(at, name, flags, Mode::empty()).map_err(|errno| {
            // O_DIRECTORY on a symlink reports ENOTDIR, not ELOOP: tell the
            // two apart so a symlinked directory is refused (403), not missing.
            let is_symlink = || {
                rustix::fs::statat(at, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink)
            };
            if errno == rustix::io::Errno::NOTDIR && is_symlink() {
                rustix::io::Errno::LOOP
            } else {
                errno
            }
        })?;
        current = Some(opened);
    }
    Ok(current.expect("a non-empty path has a component"))
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
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
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

    #[test]
    fn openat2_follows_inner_symlinks_and_refuses_outer_ones() {
        let (dir, _outside) = tree();
        let root = Root::open(dir.path(), false).unwrap();
        assert_eq!(root.resolver(), Resolver::Openat2, "this kernel has openat2");
        let file = root.resolve(b"inner-link").unwrap();
        assert_eq!((file.len, file.key.as_slice()), (5, &b"inner-link"[..]));
        assert_eq!(refusal(&root, "outer-link"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "sub/up/etc/passwd"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "fifo"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "sub"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, ""), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "missing"), Some(Refusal::NotFound));
        assert_eq!(refusal(&root, "sub/file.txt/x"), Some(Refusal::NotFound));
    }

    #[test]
    fn the_fallback_walk_refuses_every_symlink() {
        let (dir, _outside) = tree();
        let root = Root::open_with(dir.path(), false, Resolver::NoFollowWalk).unwrap();
        assert_eq!(root.resolve(b"sub/file.txt").unwrap().len, 5);
        assert_eq!(refusal(&root, "inner-link"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "outer-link"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "sub/up/etc/passwd"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "fifo"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "sub"), Some(Refusal::Forbidden));
        assert_eq!(refusal(&root, "missing"), Some(Refusal::NotFound));
        assert_eq!(refusal(&root, "sub/file.txt/"), Some(Refusal::NotFound));
        assert_eq!(refusal(&root, "sub/"), Some(Refusal::Forbidden));
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
