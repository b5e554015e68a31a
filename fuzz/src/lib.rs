//! What the fuzz targets share: a scratch folder per process (the loaders read files, as a
//! user's run does) and the split of one input into several files.

use std::path::{Path, PathBuf};

/// A folder of this process's own under the temporary folder, emptied for each input.
pub fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("echo-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the scratch folder");
    dir
}

/// Writes `bytes` to `dir/name` (creating `name`'s folders).
pub fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("creating a folder in the scratch folder");
    }
    std::fs::write(&path, bytes).expect("writing into the scratch folder");
    path
}

/// Splits an input into `n` parts: each but the last is a little-endian `u32` length and that
/// many bytes (cut short where the input ends); the last part is the rest. A corpus file made by
/// [`join`] splits back into the files it was made from.
pub fn split(mut data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    for _ in 1..n {
        let len = match data.get(..4) {
            Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => data.len(),
        };
        data = data.get(4..).unwrap_or(&[]);
        let (head, rest) = data.split_at(len.min(data.len()));
        parts.push(head);
        data = rest;
    }
    parts.push(data);
    parts
}

/// The inverse of [`split`], for making seed inputs.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        }
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_undoes_join() {
        let parts: [&[u8]; 3] = [b"{\"a\": 1}", b"", b"rest of it"];
        assert_eq!(split(&join(&parts), 3), parts.to_vec());
        // Short or empty inputs still give n parts.
        assert_eq!(split(&[1, 0], 3).len(), 3);
        assert_eq!(split(&[], 2), vec![&[][..], &[][..]]);
    }
}
