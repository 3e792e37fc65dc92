//! Where the trainer publishes the snapshots the student server reloads:
//! `engine.publish_dir` when given, else a folder in memory (`/dev/shm`)
//! when it has room, else `served/` in the output folder.
//!
//! A snapshot is written and read once per refresh, so memory spares the
//! disk a write of the whole student every K steps (every step for
//! on-policy). A folder npd made in `/dev/shm` is removed when the run
//! ends; one left by a run that was killed is removed by the next run
//! that finds its process gone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The shared-memory file system npd publishes into by default.
const SHM: &str = "/dev/shm";
/// File that marks a folder in [`SHM`] as npd's, holding its process id.
const MARKER: &str = ".npd-publish-root";

/// The publish root of a run.
#[derive(Debug)]
pub struct PublishRoot {
    dir: PathBuf,
    /// Why this folder, for the report.
    pub line: String,
    /// Made by npd in memory: removed when dropped.
    temporary: bool,
}

impl PublishRoot {
    /// `given` when not empty; else a folder in `/dev/shm` when it has
    /// room for three snapshots of `snapshot_bytes` (one being written,
    /// the two it keeps), else `served/` under `out`.
    pub fn choose(given: &Path, out: &Path, snapshot_bytes: u64) -> Result<Self> {
        if !given.as_os_str().is_empty() {
            return Self::on_disk(
                given,
                format!(
                    "snapshots published to {} (engine.publish_dir)",
                    given.display()
                ),
            );
        }
        let fallback = |why: String| {
            let dir = out.join("served");
            let line = format!("snapshots published to {} ({why})", dir.display());
            Self::on_disk(&dir, line)
        };
        let shm = Path::new(SHM);
        if !shm.is_dir() {
            return fallback(format!("{SHM} does not exist"));
        }
        remove_abandoned(shm);
        let need = snapshot_bytes
            .saturating_mul(3)
            .saturating_add(snapshot_bytes / 10);
        let free = match free_bytes(shm) {
            Some(f) => f,
            None => return fallback(format!("the free space of {SHM} is unknown")),
        };
        if free < need {
            return fallback(format!(
                "{SHM} has {:.2} GB free, three snapshots need {:.2} GB",
                free as f64 / 1e9,
                need as f64 / 1e9
            ));
        }
        let dir = shm.join(format!("npd-{}", std::process::id()));
        let made = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(MARKER), std::process::id().to_string()));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return fallback(format!("{SHM} is not writable: {e}"));
        }
        Ok(Self {
            line: format!(
                "snapshots published to {} (memory; {:.2} GB each, {:.2} GB free there; removed at the end)",
                dir.display(),
                snapshot_bytes as f64 / 1e9,
                free as f64 / 1e9
            ),
            dir: dir.canonicalize().unwrap_or(dir),
            temporary: true,
        })
    }

    fn on_disk(dir: &Path, line: String) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        Ok(Self {
            dir: dir
                .canonicalize()
                .with_context(|| dir.display().to_string())?,
            line,
            temporary: false,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the folder is npd's own, in memory, removed at the end.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }
}

impl Drop for PublishRoot {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Bytes free for an unprivileged writer in the file system of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        let s = nix::sys::statvfs::statvfs(dir).ok()?;
        Some(s.blocks_available() as u64 * s.fragment_size() as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// Removes npd's folders in `shm` whose process is gone (a killed run).
fn remove_abandoned(shm: &Path) {
    let Ok(entries) = std::fs::read_dir(shm) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let is_npds = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("npd-"));
        if !is_npds {
            continue;
        }
        let Ok(pid) = std::fs::read_to_string(path.join(MARKER)) else {
            continue;
        };
        if let Ok(pid) = pid.trim().parse::<i32>()
            && !alive(pid)
        {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

fn alive(pid: i32) -> bool {
    #[cfg(unix)]
    {
        use nix::errno::Errno;
        !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(Errno::ESRCH)
        )
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_folder_is_used_and_kept() {
        let out = std::env::temp_dir().join(format!("npd-root-given-{}", std::process::id()));
        let given = out.join("mine");
        {
            let root = PublishRoot::choose(&given, &out, 1).unwrap();
            assert!(!root.is_temporary());
            assert_eq!(root.dir(), given.canonicalize().unwrap());
        }
        assert!(given.is_dir());
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn memory_is_used_when_it_has_room_and_disk_otherwise() {
        let out = std::env::temp_dir().join(format!("npd-root-default-{}", std::process::id()));
        // More than any machine has: the output folder.
        let root = PublishRoot::choose(Path::new(""), &out, u64::MAX / 4).unwrap();
        assert!(!root.is_temporary());
        assert_eq!(root.dir(), out.join("served").canonicalize().unwrap());
        if Path::new(SHM).is_dir() && free_bytes(Path::new(SHM)).is_some_and(|f| f > 1 << 20) {
            let dir = {
                let root = PublishRoot::choose(Path::new(""), &out, 1024).unwrap();
                assert!(root.is_temporary(), "{}", root.line);
                assert!(root.dir().starts_with(SHM));
                assert!(root.dir().join(MARKER).is_file());
                root.dir().to_path_buf()
            };
            assert!(!dir.exists(), "removed when the run ends");
        }
        let _ = std::fs::remove_dir_all(&out);
    }

    #[test]
    fn folders_of_runs_that_are_gone_are_removed_and_others_kept() {
        let shm = std::env::temp_dir().join(format!("npd-shm-{}", std::process::id()));
        let gone = shm.join("npd-dead");
        let live = shm.join("npd-live");
        let other = shm.join("npd-not-ours");
        for d in [&gone, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
        }
        // No process has the largest pid Linux allows plus one.
        std::fs::write(gone.join(MARKER), "4194305").unwrap();
        std::fs::write(live.join(MARKER), std::process::id().to_string()).unwrap();
        remove_abandoned(&shm);
        assert!(!gone.exists());
        assert!(live.exists() && other.exists());
        let _ = std::fs::remove_dir_all(&shm);
    }
}
