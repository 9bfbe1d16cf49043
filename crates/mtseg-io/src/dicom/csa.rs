//! The Siemens CSA header (private element 0029,1010 "CSA Image Header Info"), read for the
//! two fields a mosaic needs: how many slices it holds and their normal. Written by hand:
//! no maintained Rust crate reads it. Format "SV10": the magic and four bytes, the number of
//! fields (u32) and a u32; then per field its name (64 bytes, NUL-terminated), VM (i32), VR
//! (4 bytes), SyngoDT (i32), item count (i32) and a u32; then per item four i32s, the second
//! its length, and that many bytes of text padded to four. All little-endian.

/// Values of a CSA field by name, as text.
pub fn field(bytes: &[u8], name: &str) -> Option<Vec<String>> {
    let mut at = Reader { bytes, at: 0 };
    if at.take(4)? != b"SV10" {
        return None;
    }
    at.take(4)?;
    let count = at.u32()?;
    at.u32()?;
    // More fields than bytes: a corrupt header.
    if count as usize > bytes.len() {
        return None;
    }
    for _ in 0..count {
        let raw_name = at.take(64)?;
        let end = raw_name.iter().position(|&b| b == 0).unwrap_or(64);
        let this = std::str::from_utf8(&raw_name[..end]).ok()?;
        at.take(4 + 4 + 4)?;
        let items = at.u32()? as usize;
        at.u32()?;
        if items > bytes.len() {
            return None;
        }
        let mut values = Vec::with_capacity(items);
        for _ in 0..items {
            let header = at.take(16)?;
            let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
            let text = at.take(len)?;
            at.take((4 - len % 4) % 4)?;
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            values.push(String::from_utf8_lossy(&text[..end]).trim().to_string());
        }
        if this == name {
            return Some(values.into_iter().filter(|v| !v.is_empty()).collect());
        }
    }
    None
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let slice = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(slice)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CSA header with the given fields (name, item texts).
    pub(crate) fn header(fields: &[(&str, &[&str])]) -> Vec<u8> {
        let mut out = b"SV10\x04\x03\x02\x01".to_vec();
        out.extend((fields.len() as u32).to_le_bytes());
        out.extend(77u32.to_le_bytes());
        for (name, items) in fields {
            let mut raw = [0u8; 64];
            raw[..name.len()].copy_from_slice(name.as_bytes());
            out.extend(raw);
            out.extend(1i32.to_le_bytes());
            out.extend(b"IS\0\0");
            out.extend(6i32.to_le_bytes());
            out.extend((items.len() as u32).to_le_bytes());
            out.extend(77u32.to_le_bytes());
            for item in *items {
                let len = item.len() + 1;
                for v in [len as i32, len as i32, 77, len as i32] {
                    out.extend(v.to_le_bytes());
                }
                out.extend(item.as_bytes());
                out.push(0);
                out.extend(std::iter::repeat_n(0u8, (4 - len % 4) % 4));
            }
        }
        out
    }

    #[test]
    fn fields_are_found_by_name_and_corrupt_headers_give_nothing() {
        let bytes = header(&[
            ("EchoLinePosition", &["32"]),
            ("NumberOfImagesInMosaic", &["35"]),
            ("SliceNormalVector", &["0.0", "-0.1", "0.99"]),
        ]);
        assert_eq!(field(&bytes, "NumberOfImagesInMosaic").unwrap(), vec!["35"]);
        assert_eq!(
            field(&bytes, "SliceNormalVector").unwrap(),
            vec!["0.0", "-0.1", "0.99"]
        );
        assert!(field(&bytes, "Missing").is_none());
        for cut in [0, 7, 20, 100, bytes.len() - 3] {
            assert!(field(&bytes[..cut], "SliceNormalVector").is_none(), "{cut}");
        }
        let mut huge = bytes.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(field(&huge, "SliceNormalVector").is_none());
    }
}
