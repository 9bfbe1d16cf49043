//! Line-based text headers (NRRD, MetaImage) read with a size cap, so a binary file given by
//! mistake is refused quickly instead of being read whole as "header".

use std::io::BufRead;
use std::path::Path;

use super::voxels::stream_error;
use crate::error::{Error, Result};

const MAX_HEADER_BYTES: usize = 1 << 20;
const MAX_LINE_BYTES: usize = 64 << 10;

/// Reads one header line without its line ending; `None` at the end of the stream.
pub fn read_line(
    path: &Path,
    reader: &mut impl BufRead,
    total: &mut usize,
) -> Result<Option<String>> {
    let mut line = Vec::new();
    let n = std::io::Read::take(&mut *reader, MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| stream_error(path, e))?;
    if n == 0 {
        return Ok(None);
    }
    *total += n;
    if n > MAX_LINE_BYTES || *total > MAX_HEADER_BYTES {
        return Err(Error::invalid(
            path,
            "header too long: this does not look like a text header",
        ));
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| Error::invalid(path, "the header contains non-text bytes"))
}

/// Parses whitespace-separated numbers, naming the field on failure.
pub fn numbers<T: std::str::FromStr>(path: &Path, field: &str, text: &str) -> Result<Vec<T>> {
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<T>().map_err(|_| {
                Error::invalid(path, format!("field '{field}': '{s}' is not a number"))
            })
        })
        .collect()
}

/// Checks that a field holds exactly `n` values.
pub fn exactly<T>(path: &Path, field: &str, values: Vec<T>, n: usize) -> Result<Vec<T>> {
    if values.len() != n {
        return Err(Error::invalid(
            path,
            format!("field '{field}' has {} values, expected {n}", values.len()),
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_their_endings_and_long_headers_are_refused() {
        let p = Path::new("h.nrrd");
        let mut total = 0;
        let mut r = &b"a: 1\r\nb: 2\n"[..];
        assert_eq!(read_line(p, &mut r, &mut total).unwrap().unwrap(), "a: 1");
        assert_eq!(read_line(p, &mut r, &mut total).unwrap().unwrap(), "b: 2");
        assert!(read_line(p, &mut r, &mut total).unwrap().is_none());
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let mut r = &long[..];
        assert!(read_line(p, &mut r, &mut 0).is_err());
    }

    #[test]
    fn numbers_name_the_field_on_error() {
        let p = Path::new("h.mha");
        assert_eq!(
            numbers::<f64>(p, "Offset", "1 2.5,3").unwrap(),
            vec![1.0, 2.5, 3.0]
        );
        let err = numbers::<f64>(p, "Offset", "1 x").unwrap_err();
        assert!(err.to_string().contains("Offset"));
    }
}
