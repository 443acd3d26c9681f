//! The root the grader serves from, filled by the grader itself: the files
//! each test asks for, and the traps the sandbox must refuse.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Content only ever stored outside the root: no response may contain it.
pub const SECRET: &[u8] = b"SECRET-OUTSIDE-THE-ROOT-7f3a9c\n";

/// The content of `.hidden`, a file inside the root that must be refused
/// all the same (a hidden name): told apart from [`SECRET`] in reports.
pub const HIDDEN: &[u8] = b"a hidden file inside the root\n";

/// The content of `mutable.txt` as made (the cache tests edit it).
const MUTABLE: &[u8] = b"version one\n";

/// A file larger than any socket's buffers (Linux's default send buffer
/// grows to at most 4 MiB): no server can send it in one call.
pub const LARGE_REPLY: &str = "16m.bin";

/// Files read concurrently by the stage-4 tests, one per client.
pub const SLOW_FILES: usize = 8;

/// The served root and, beside it, `outside/` (never served). Either both
/// live in a temporary directory, or (grading a server someone else runs)
/// the files are put into that server's root and removed again on drop.
#[derive(Debug)]
pub struct Fixture {
    dir: tempfile::TempDir,
    root: PathBuf,
    /// Top-level entries made in a root that is not ours, to remove on drop.
    placed: Vec<PathBuf>,
}

/// The bytes of a deterministic test file of `len` bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    // Byte i is (31 i + 7 seed) mod 251: one period of 251 bytes, copied
    // over (byte by byte, an unoptimised grader took seconds for 80 MiB).
    let period: Vec<u8> = (0..251).map(|i| ((i * 31 + seed as usize * 7) % 251) as u8).collect();
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        let take = period.len().min(len - bytes.len());
        bytes.extend_from_slice(&period[..take]);
    }
    bytes
}

impl Fixture {
    /// Creates the tree in a temporary directory (about 81 MiB, most of it two files).
    pub fn create() -> Result<Fixture> {
        let dir = tempfile::Builder::new().prefix("grade-").tempdir().context("cannot create a temporary root")?;
        let root = dir.path().join("root");
        Fixture::fill(dir, root, false)
    }

    /// Puts the files into `root`, the root of a server the grader did not
    /// start; the secret goes to a temporary directory outside it.
    pub fn create_in(root: &Path) -> Result<Fixture> {
        anyhow::ensure!(root.is_dir(), "--root {} is not a directory", root.display());
        let dir = tempfile::Builder::new().prefix("grade-").tempdir().context("cannot create a temporary directory")?;
        Fixture::fill(dir, root.to_path_buf(), true)
    }

    fn fill(dir: tempfile::TempDir, root: PathBuf, borrowed_root: bool) -> Result<Fixture> {
        // In a root that is not ours, what the fixture adds is what is new
        // afterwards: removed again on drop, whatever the fixture holds.
        let before: Vec<PathBuf> = if borrowed_root { entries(&root)? } else { Vec::new() };
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("dir/sub")).with_context(|| format!("cannot fill {}", root.display()))?;
        std::fs::create_dir_all(root.join("slow"))?;
        std::fs::create_dir_all(&outside)?;
        std::fs::write(outside.join("secret.txt"), SECRET)?;
        let files: [(&str, Vec<u8>); 10] = [
            ("small.txt", b"small file, served whole\n".to_vec()),
            ("empty.txt", Vec::new()),
            ("1m.bin", pattern(1 << 20, 1)),
            ("64m.bin", pattern(64 << 20, 2)),
            (LARGE_REPLY, pattern(16 << 20, 3)),
            ("a..b.txt", b"two dots inside a name are not an escape\n".to_vec()),
            ("name with spaces.txt", b"spaces are part of the name\n".to_vec()),
            ("dir/sub/nested.txt", b"nested\n".to_vec()),
            (".hidden", HIDDEN.to_vec()),
            ("mutable.txt", MUTABLE.to_vec()),
        ];
        for (name, content) in files {
            std::fs::write(root.join(name), content).with_context(|| format!("cannot write {name}"))?;
        }
        for i in 0..SLOW_FILES {
            std::fs::write(root.join(format!("slow/{i}.txt")), pattern(4096, i as u8 + 10))?;
        }
        symlink("small.txt", root.join("in-link"))?;
        std::fs::write(root.join("unreadable.txt"), b"nobody may read this\n")?;
        std::fs::set_permissions(root.join("unreadable.txt"), std::fs::Permissions::from_mode(0o000))?;
        symlink(outside.join("secret.txt"), root.join("out-link"))?;
        symlink(&outside, root.join("out-dir"))?;
        symlink("../../outside/secret.txt", root.join("dir/up-link"))?;
        make_fifo(&root.join("fifo"))?;
        let placed = if borrowed_root {
            entries(&root)?.into_iter().filter(|entry| !before.contains(entry)).collect()
        } else {
            Vec::new()
        };
        Ok(Fixture { dir, root, placed })
    }

    /// The directory passed as `{root}`.
    pub fn root(&self) -> PathBuf {
        self.root.clone()
    }

    /// The secret's absolute path.
    pub fn secret_path(&self) -> PathBuf {
        self.dir.path().join("outside/secret.txt")
    }

    /// The content the grader expects for `name` under the root.
    pub fn content(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.root().join(name)).unwrap_or_default()
    }

    /// Restores what the tests change (the file the cache tests edit), so
    /// that a repeated test starts from the files as they were made.
    pub fn reset(&self) -> Result<()> {
        self.rewrite("mutable.txt", MUTABLE)
    }

    /// Makes the tree readable to a server that runs as another user (the
    /// grader runs as root; the server as `nobody`): the temporary folder
    /// is private when made, and every folder above it must let others
    /// pass (`o+x`, which lists nothing). The secret outside the root is
    /// readable too, on purpose: a server that follows a symlink out must
    /// be able to leak it, or `sandbox.symlinks` would pass by accident.
    /// `unreadable.txt` stays unreadable: that is its test.
    pub fn open_to_others(&self) -> Result<()> {
        let dir = self.dir.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot open {} to the server's user", dir.display()))?;
        let mut above = dir.parent();
        while let Some(folder) = above {
            let mode = std::fs::metadata(folder)?.permissions().mode();
            if mode & 0o001 == 0 {
                std::fs::set_permissions(folder, std::fs::Permissions::from_mode(mode | 0o001))
                    .with_context(|| format!("cannot let the server's user pass through {}", folder.display()))?;
            }
            above = folder.parent();
        }
        Ok(())
    }

    /// Rewrites `name` (the cache tests edit a file behind the server's back).
    pub fn rewrite(&self, name: &str, content: &[u8]) -> Result<()> {
        std::fs::write(self.root().join(name), content).with_context(|| format!("cannot rewrite {name}"))
    }
}

/// Makes a FIFO (a named pipe): a file the server must refuse without
/// blocking on it.
fn make_fifo(path: &Path) -> Result<()> {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .map_err(std::io::Error::from);
    // rustix has no mknod for macOS; its mkfifo(1) does the same.
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    let made = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .and_then(|status| status.success().then_some(()).ok_or_else(|| std::io::Error::other("mkfifo failed")));
    made.with_context(|| format!("cannot create the FIFO {}", path.display()))
}

/// The top-level entries of `dir`.
fn entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let listed = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    Ok(listed.filter_map(|entry| Some(entry.ok()?.path())).collect())
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for path in &self.placed {
            let _ = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pattern_is_byte_i_times_31_plus_7_seed_mod_251() {
        let bytes = super::pattern(1000, 3);
        assert!(bytes.iter().enumerate().all(|(i, &b)| b as usize == (i * 31 + 21) % 251));
        assert_eq!(bytes.len(), 1000);
    }
}
