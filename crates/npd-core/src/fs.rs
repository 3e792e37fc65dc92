//! Files and folders that appear atomically: written beside their final
//! name, synced, then renamed, so a reader (or a resumed run) sees either
//! the old content or the new, never a torn write.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: a hidden temporary file in the same
/// folder, synced, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut file = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(dir);
    Ok(())
}

/// A fresh, empty temporary folder beside `dir` (hidden, named after it and
/// this process), to be filled and then moved into place with
/// [`replace_dir`]. Leftovers of killed writers are recognisable by
/// [`is_partial`].
pub fn partial_dir(dir: &Path) -> Result<PathBuf> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io_err(parent))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".into());
    let tmp = parent.join(format!(".{name}.partial.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    Ok(tmp)
}

/// Whether a folder name is one [`partial_dir`] made.
pub fn is_partial(name: &str) -> bool {
    name.starts_with('.') && name.contains(".partial.")
}

/// Moves the finished folder `tmp` to `dir`: an existing `dir` is moved
/// aside first and deleted only after the rename, and the parent folder is
/// synced.
pub fn replace_dir(tmp: &Path, dir: &Path) -> Result<()> {
    let old = tmp.with_extension("old");
    let had_old = dir.exists();
    if had_old {
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    std::fs::rename(tmp, dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent);
    }
    if had_old {
        std::fs::remove_dir_all(&old).map_err(io_err(&old))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_files_appear_whole() {
        let root = std::env::temp_dir().join(format!("npd-core-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("step-1");
        for round in 0..2 {
            let tmp = partial_dir(&dir).unwrap();
            assert!(is_partial(&tmp.file_name().unwrap().to_string_lossy()));
            write_atomic(&tmp.join("a.txt"), format!("{round}").as_bytes()).unwrap();
            replace_dir(&tmp, &dir).unwrap();
            assert!(!tmp.exists());
            assert_eq!(
                std::fs::read_to_string(dir.join("a.txt")).unwrap(),
                round.to_string()
            );
        }
        let names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["step-1".to_string()]);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
