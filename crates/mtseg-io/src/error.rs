//! One error type for the whole library. Every variant that concerns a file names it, so the
//! CLI can print a single line such as `scan.nii.gz: truncated: header promises 4194304 bytes
//! of voxels, the file holds 1000`.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written at the operating-system level.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file was read but its content is not acceptable (bad header, truncated data, ...).
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// A problem that concerns no single file (bad arguments, incompatible settings, ...).
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn invalid(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }
}
