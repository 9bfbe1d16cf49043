//! Crash-safe file writing: every file mtseg writes goes to a temporary file in the target's
//! own folder, is flushed to disk, and is renamed into place. A killed process leaves the old
//! file or the new one, never a torn one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes `path` through `write`, which receives a temporary path in the same folder whose
/// name keeps `path`'s file ending (writers such as the NIfTI one choose compression by it).
pub fn write_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let folder = parent_folder(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid(path, "not a file name"))?
        .to_string_lossy()
        .into_owned();
    // The ending after the first dot (".nii.gz", ".json", ...), kept on the temporary file.
    let ending = name.find('.').map(|i| &name[i..]).unwrap_or("");
    let mut builder = tempfile::Builder::new();
    builder.prefix(".mtseg-tmp-").suffix(ending);
    // Temporary files are private (0600) by default; the file renamed into place should get
    // the permissions any new file gets (0666 less the umask), as `File::create` gives.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let temp = builder
        .tempfile_in(&folder)
        .map_err(|e| Error::io(&folder, e))?;
    let temp_path = temp.path().to_path_buf();
    // Close our handle: the writer opens the path itself. The guard still deletes the file if
    // anything below fails.
    let guard = temp.into_temp_path();
    write(&temp_path)?;
    sync_file(&temp_path)?;
    guard.persist(path).map_err(|e| Error::io(path, e.error))?;
    sync_folder(&folder);
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |temp| {
        let mut file = fs::File::create(temp).map_err(|e| Error::io(temp, e))?;
        file.write_all(bytes).map_err(|e| Error::io(temp, e))
    })
}

/// Serialises `value` as pretty JSON to `path` atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::invalid(path, format!("cannot serialise JSON: {e}")))?;
    text.push('\n');
    write_bytes(path, text.as_bytes())
}

fn parent_folder(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Makes the rename itself durable. Not every file system allows syncing a folder; a failure
/// here loses nothing that the rename has not already made visible.
fn sync_folder(folder: &Path) {
    if let Ok(dir) = fs::File::open(folder) {
        let _ = dir.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.nii.gz");
        write_bytes(&path, b"old").unwrap();
        write_bytes(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.json");
        write_bytes(&path, b"good").unwrap();
        let result = write_with(&path, |temp| {
            fs::write(temp, b"half").unwrap();
            Err(Error::usage("interrupted"))
        });
        assert!(result.is_err());
        assert_eq!(fs::read(&path).unwrap(), b"good");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temporary_file_keeps_the_ending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg.nii.gz");
        write_with(&path, |temp| {
            assert!(temp.to_string_lossy().ends_with(".nii.gz"));
            assert_eq!(temp.parent(), path.parent());
            fs::write(temp, b"x").map_err(|e| Error::io(temp, e))
        })
        .unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn written_files_get_the_permissions_of_a_plain_create() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.txt");
        fs::write(&plain, b"x").unwrap();
        let ours = dir.path().join("ours.txt");
        write_bytes(&ours, b"x").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ours), mode(&plain));
    }
}
