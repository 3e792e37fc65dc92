//! Content fingerprints of a run's input files: a resume may find the
//! models and prompts at other paths (another machine, a moved folder) and
//! checks that they are the same files.
//!
//! A fingerprint hashes, for every regular file of a folder (or for one
//! file), its name, its size and its content: all of it up to
//! [`WHOLE_BYTES`], else [`BLOCKS`] blocks of [`BLOCK_BYTES`] spread evenly
//! over it, first and last included. Weights trained further or another
//! checkpoint of the same shape differ in every block; reading 1 MiB of a
//! 15 GB folder keeps the check instant.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// Files up to this size are hashed whole.
pub const WHOLE_BYTES: u64 = 1 << 20;
/// Blocks hashed of a larger file.
pub const BLOCKS: u64 = 16;
/// Bytes of each block.
pub const BLOCK_BYTES: u64 = 64 << 10;

/// The fingerprint of `path` (a file, or a folder's files, not its
/// subfolders and not its hidden files), as hex.
pub fn of(path: &Path) -> Result<String> {
    let mut hash = Sha256::new();
    let meta = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    if meta.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| path.display().to_string())?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().is_file())
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            hash.update(name.as_bytes());
            hash.update([0]);
            content(&file, &mut hash)?;
        }
    } else {
        content(path, &mut hash)?;
    }
    Ok(hash.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Adds `file`'s size and sampled content to `hash`.
fn content(file: &Path, hash: &mut Sha256) -> Result<()> {
    let at = || file.display().to_string();
    let mut f = std::fs::File::open(file).with_context(at)?;
    let size = f.metadata().with_context(at)?.len();
    hash.update(size.to_le_bytes());
    if size <= WHOLE_BYTES {
        let mut bytes = Vec::with_capacity(size as usize);
        f.read_to_end(&mut bytes).with_context(at)?;
        hash.update(&bytes);
        return Ok(());
    }
    let mut block = vec![0u8; BLOCK_BYTES as usize];
    let last = size - BLOCK_BYTES;
    for i in 0..BLOCKS {
        f.seek(SeekFrom::Start(last * i / (BLOCKS - 1)))
            .with_context(at)?;
        f.read_exact(&mut block).with_context(at)?;
        hash.update(&block);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(what: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("npd-fingerprint-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_copy_elsewhere_matches_and_any_changed_block_does_not() {
        let a = scratch("a");
        let big: Vec<u8> = (0..3u64 << 20).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(a.join("model.safetensors"), &big).unwrap();
        std::fs::write(a.join("config.json"), "{}").unwrap();
        let b = scratch("b");
        for f in ["model.safetensors", "config.json"] {
            std::fs::copy(a.join(f), b.join(f)).unwrap();
        }
        // Hidden files (a lock, editor swap files) do not count.
        std::fs::write(b.join(".lock"), "").unwrap();
        assert_eq!(of(&a).unwrap(), of(&b).unwrap());
        // The last byte is in the last block; the file's size and the
        // small file's content count too.
        let mut changed = big.clone();
        *changed.last_mut().unwrap() ^= 1;
        std::fs::write(b.join("model.safetensors"), &changed).unwrap();
        assert_ne!(of(&a).unwrap(), of(&b).unwrap());
        std::fs::write(b.join("model.safetensors"), &big[1..]).unwrap();
        assert_ne!(of(&a).unwrap(), of(&b).unwrap());
        std::fs::write(b.join("model.safetensors"), &big).unwrap();
        std::fs::write(b.join("config.json"), "{ }").unwrap();
        assert_ne!(of(&a).unwrap(), of(&b).unwrap());
        // A renamed file is another folder.
        std::fs::write(b.join("config.json"), "{}").unwrap();
        std::fs::rename(b.join("config.json"), b.join("config2.json")).unwrap();
        assert_ne!(of(&a).unwrap(), of(&b).unwrap());
        let err = of(&a.join("missing")).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}
