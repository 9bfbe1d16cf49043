//! A walk over a DICOM file's element headers that refuses a value declared longer than the
//! rest of the file, before dicom-rs parses it: dicom-parser 0.10 reserves and zero-fills a
//! value's declared length before reading it, so a 600-byte file declaring a 4 GB value would
//! cost 4 GB of memory (found by `fuzz/fuzz_targets/dicom.rs`). Only headers are read; values
//! are skipped. A deflated data set is walked as it inflates, in two passes (its length, then
//! its elements), holding none of it.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use flate2::read::DeflateDecoder;
use std::path::Path;

use dicom_core::Tag;
use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
use dicom_core::header::VR;
use dicom_dictionary_std::StandardDataDictionary;

use crate::error::{Error, Result};

const IMPLICIT_LITTLE: &str = "1.2.840.10008.1.2";
const EXPLICIT_BIG: &str = "1.2.840.10008.1.2.2";
/// Transfer syntaxes whose whole data set is deflated (dicom-rs 0.10's registry).
const DEFLATED: &[&str] = &[
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.95",
    "1.2.840.10008.1.2.4.205",
];
const UNDEFINED: u32 = u32::MAX;
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const PIXEL_REPRESENTATION: (u16, u16) = (0x0028, 0x0103);

#[derive(Clone, Copy, PartialEq)]
enum Encoding {
    ExplicitLittle,
    ImplicitLittle,
    ExplicitBig,
}

/// Where the walk reads from: a file seeks past a value, an inflating stream reads through it.
trait Source: Read {
    fn skip(&mut self, n: u64) -> bool;
}

impl Source for BufReader<File> {
    fn skip(&mut self, n: u64) -> bool {
        i64::try_from(n).is_ok_and(|n| self.seek_relative(n).is_ok())
    }
}

impl<R: Read> Source for DeflateDecoder<R> {
    fn skip(&mut self, n: u64) -> bool {
        std::io::copy(&mut self.take(n), &mut std::io::sink()).is_ok_and(|read| read == n)
    }
}

struct Walker<R> {
    from: R,
    /// Bytes read from the file.
    position: u64,
    /// dicom-parser's own count, which adds a number value's declared length though it reads
    /// only whole numbers: sequences and items of defined length end by this count.
    counted: u64,
    end: u64,
    /// Pixel Representation (0028,0103) as last read: when signed, dicom-parser reads every
    /// element the dictionary gives "US or SS" as SS.
    signed: Option<bool>,
}

impl<R: Source> Walker<R> {
    /// `n` bytes, or `None` at the end of the file (a truncated header is dicom-rs's to report).
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.from.read_exact(&mut b).ok()?;
        self.position += N as u64;
        self.counted += N as u64;
        Some(b)
    }

    fn u16(&mut self, big: bool) -> Option<u16> {
        self.bytes::<2>().map(|b| {
            if big {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            }
        })
    }

    fn u32(&mut self, big: bool) -> Option<u32> {
        self.bytes::<4>().map(|b| {
            if big {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }
        })
    }

    /// Skips `read` bytes of a value dicom-parser counts as `counted` bytes.
    fn skip(&mut self, read: u32, counted: u32) -> Option<()> {
        if !self.from.skip(u64::from(read)) {
            return None;
        }
        self.position += u64::from(read);
        self.counted += u64::from(counted);
        Some(())
    }

    /// Reads a value as dicom-parser does; the Pixel Representation's first number is kept.
    fn value(&mut self, tag: (u16, u16), vr: Option<VR>, length: u32, big: bool) -> Option<()> {
        let read = bytes_read(vr, length);
        if tag == PIXEL_REPRESENTATION && matches!(vr, Some(VR::US | VR::OW)) && length > 0 {
            if read == 0 {
                self.signed = None;
            } else {
                self.signed = Some(self.u16(big)? != 0);
                return self.skip(read - 2, length - 2);
            }
        }
        self.skip(read, length)
    }

    /// One element header: tag, VR (explicit encodings; the dictionary's for implicit), and
    /// declared length.
    fn header(&mut self, encoding: Encoding) -> Option<((u16, u16), Option<VR>, u32)> {
        let big = encoding == Encoding::ExplicitBig;
        let tag = (self.u16(big)?, self.u16(big)?);
        if encoding == Encoding::ImplicitLittle {
            // As dicom-rs resolves it: pixel and overlay data are OW, the rest the dictionary's
            // VR (its first choice where several are allowed), UN when the tag is unknown.
            let vr = if tag == PIXEL_DATA || (tag.0 >> 8 == 0x60 && tag.1 == 0x3000) {
                VR::OW
            } else {
                StandardDataDictionary
                    .by_tag(Tag(tag.0, tag.1))
                    .map_or(VR::UN, |e| e.vr().relaxed())
            };
            return Some((tag, Some(vr), self.u32(false)?));
        }
        if tag.0 == 0xFFFE {
            // Items and delimiters: no VR in the explicit encodings.
            return Some((tag, None, self.u32(big)?));
        }
        // As dicom-rs reads it: an unknown VR is UN, and only these VRs have 2-byte lengths.
        let vr = VR::from_binary(self.bytes::<2>()?).unwrap_or(VR::UN);
        let long = !matches!(
            vr,
            VR::AE
                | VR::AS
                | VR::AT
                | VR::CS
                | VR::DA
                | VR::DS
                | VR::DT
                | VR::FL
                | VR::FD
                | VR::IS
                | VR::LO
                | VR::LT
                | VR::PN
                | VR::SH
                | VR::SL
                | VR::SS
                | VR::ST
                | VR::TM
                | VR::UI
                | VR::UL
                | VR::US
        );
        let length = if long {
            self.skip(2, 2)?;
            self.u32(big)?
        } else {
            u32::from(self.u16(big)?)
        };
        Some((tag, Some(vr), length))
    }

    /// Refuses a value of `length` bytes at the current position that the file cannot hold.
    fn fits(&self, tag: (u16, u16), length: u32, path: &Path) -> Result<()> {
        if u64::from(length) > self.end.saturating_sub(self.position) {
            return Err(Error::invalid(
                path,
                format!(
                    "element ({:04X},{:04X}) declares {length} bytes at offset {}, beyond the \
                     end of the file ({} bytes)",
                    tag.0, tag.1, self.position, self.end
                ),
            ));
        }
        Ok(())
    }

    /// Walks the data set as dicom-parser 0.10's `DataSetReader` reads it (the states below
    /// are its states), checking every value it would read before reading it; stops, without
    /// an error, where dicom-rs would stop with one of its own.
    fn walk(&mut self, encoding: Encoding, path: &Path) -> Result<()> {
        // Open sequences and items, innermost last.
        let mut open: Vec<Open> = Vec::new();
        // Between the items of a sequence (an item header is next), or inside an item or the
        // data set (an element header is next).
        let mut between_items = false;
        // The first item of encapsulated pixel data is its offset table.
        let mut offset_table_next = false;
        loop {
            // Sequences and items of defined length end where their length says.
            while let Some(&Open {
                end: Some(end),
                item,
                ..
            }) = open.last()
            {
                if end > self.counted {
                    break;
                }
                if end < self.counted {
                    return Ok(());
                }
                open.pop();
                between_items = item;
            }
            if between_items {
                let Some((tag, _, length)) = self.header(encoding) else {
                    return Ok(());
                };
                match tag {
                    (0xFFFE, 0xE000) => {
                        let Some(pixels) = open.last().map(|o| o.pixels) else {
                            return Ok(());
                        };
                        open.push(Open::new(true, pixels, length, self.counted));
                        between_items = false;
                    }
                    (0xFFFE, 0xE00D) if length == 0 => {
                        open.pop();
                    }
                    (0xFFFE, 0xE0DD) => {
                        open.pop();
                        between_items = false;
                    }
                    _ => return Ok(()),
                }
                continue;
            }
            if let Some(&Open {
                item: true,
                pixels: true,
                length,
                ..
            }) = open.last()
            {
                // An item of encapsulated pixel data: the offset table (whole numbers) or a
                // fragment, read whole; the item's full length again if a short offset table
                // left bytes unread.
                if length == UNDEFINED {
                    return Ok(());
                }
                let length = if offset_table_next {
                    length - length % 4
                } else {
                    length
                };
                self.fits((0xFFFE, 0xE000), length, path)?;
                offset_table_next = false;
                if self.skip(length, length).is_none() {
                    return Ok(());
                }
                continue;
            }
            let Some((tag, vr, length)) = self.header(encoding) else {
                return Ok(());
            };
            let vr = if self.signed == Some(true) && is_us_or_ss(tag) {
                Some(VR::SS)
            } else {
                vr
            };
            match tag {
                _ if vr == Some(VR::SQ) => {
                    open.push(Open::new(false, false, length, self.counted));
                    between_items = true;
                }
                (0xFFFE, 0xE00D) if open.is_empty() => {}
                (0xFFFE, 0xE00D) => {
                    open.pop();
                    between_items = true;
                }
                PIXEL_DATA if length == UNDEFINED => {
                    open.push(Open::new(false, true, UNDEFINED, self.counted));
                    let Some((tag, _, length)) = self.header(encoding) else {
                        return Ok(());
                    };
                    match tag {
                        (0xFFFE, 0xE000) => {
                            open.push(Open::new(true, true, length, self.counted));
                            offset_table_next = length != 0;
                        }
                        (0xFFFE, 0xE0DD) => {
                            open.pop();
                        }
                        _ => return Ok(()),
                    }
                }
                // Other undefined lengths are read as sequences, whatever their VR.
                _ if length == UNDEFINED => {
                    open.push(Open::new(false, false, UNDEFINED, self.counted));
                    between_items = true;
                }
                _ => {
                    self.fits(tag, bytes_read(vr, length), path)?;
                    let big = encoding == Encoding::ExplicitBig;
                    if self.value(tag, vr, length, big).is_none() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// A sequence or an item the walk is in.
#[derive(Clone, Copy)]
struct Open {
    item: bool,
    /// Of encapsulated pixel data.
    pixels: bool,
    /// Its declared length, and where it ends for a defined one.
    length: u32,
    end: Option<u64>,
}

impl Open {
    fn new(item: bool, pixels: bool, length: u32, position: u64) -> Self {
        let end = (length != UNDEFINED).then(|| position + u64::from(length));
        Open {
            item,
            pixels,
            length,
            end,
        }
    }
}

/// Whether the dictionary gives `tag` "US or SS" (Pixel Padding Value and the like).
fn is_us_or_ss(tag: (u16, u16)) -> bool {
    StandardDataDictionary
        .by_tag(Tag(tag.0, tag.1))
        .is_some_and(|e| e.vr() == VirtualVr::Xs)
}

/// How many bytes of a value dicom-parser 0.10 reads: binary numbers are read whole, so a
/// length that is not a multiple of the number's size leaves its last bytes unread, and the
/// next element header is read from there (found by the fuzz target: a UL value of 26 bytes
/// shifted the rest of the file by two bytes, and a value length read from the shifted bytes
/// asked for 4 GB).
fn bytes_read(vr: Option<VR>, length: u32) -> u32 {
    let size = match vr {
        Some(VR::US | VR::SS | VR::OW) => 2,
        Some(VR::UL | VR::SL | VR::FL | VR::OF | VR::OL | VR::AT) => 4,
        Some(VR::FD | VR::OD | VR::SV | VR::UV | VR::OV) => 8,
        _ => 1,
    };
    length - length % size
}

/// Refuses `path` if one of its data elements declares a value longer than what follows it in
/// the file (see the module's comment). Files that are not DICOM are left to the parser.
pub fn check(path: &Path) -> Result<()> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let end = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut w = Walker {
        from: BufReader::new(file),
        position: 0,
        counted: 0,
        end,
        signed: None,
    };
    // The 128-byte preamble and "DICM" (dicom-rs also reads files without the preamble).
    if w.bytes::<132>().is_none_or(|b| &b[128..] != b"DICM") {
        w.from.rewind().map_err(|e| Error::io(path, e))?;
        w.position = 0;
        w.counted = 0;
        if w.bytes::<4>() != Some(*b"DICM") {
            return Ok(());
        }
    }
    // The file meta group, as dicom-rs reads it: explicit VR little endian, its group length
    // (0002,0000) first, then elements until that many bytes are read; it names the data
    // set's transfer syntax. Without a group length dicom-rs refuses the file itself.
    let group_length = match w.header(Encoding::ExplicitLittle) {
        Some(((0x0002, 0x0000), _, 4)) => match w.u32(false) {
            Some(n) => u64::from(n),
            None => return Ok(()),
        },
        _ => return Ok(()),
    };
    let meta_start = w.position;
    let mut transfer_syntax = String::new();
    while w.position - meta_start < group_length {
        let Some((tag, _, length)) = w.header(Encoding::ExplicitLittle) else {
            return Ok(());
        };
        if length == UNDEFINED || u64::from(length) > end.saturating_sub(w.position) {
            return Err(Error::invalid(
                path,
                format!(
                    "its file meta element ({:04X},{:04X}) declares {length} bytes",
                    tag.0, tag.1
                ),
            ));
        }
        if tag == (0x0002, 0x0010) {
            let mut uid = vec![0u8; length as usize];
            if w.from.read_exact(&mut uid).is_err() {
                return Ok(());
            }
            w.position += u64::from(length);
            w.counted += u64::from(length);
            // Trimmed as dicom-rs trims it before looking it up.
            transfer_syntax = String::from_utf8_lossy(&uid)
                .trim_end_matches(|c: char| c.is_whitespace() || c == '\0')
                .to_string();
        } else if w.skip(length, length).is_none() {
            return Ok(());
        }
    }
    let encoding = match transfer_syntax.as_str() {
        t if DEFLATED.contains(&t) => return check_deflated(path, w.position),
        IMPLICIT_LITTLE => Encoding::ImplicitLittle,
        EXPLICIT_BIG => Encoding::ExplicitBig,
        _ => Encoding::ExplicitLittle,
    };
    w.walk(encoding, path)
}

/// The data set of `path` from `start` on, inflated: its length first, then its elements (an
/// offset in a refusal counts inflated bytes).
fn check_deflated(path: &Path, start: u64) -> Result<()> {
    let inflating = || -> Result<DeflateDecoder<BufReader<File>>> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(path, e))?;
        Ok(DeflateDecoder::new(BufReader::new(file)))
    };
    // The bytes that inflate, up to the end or to a corrupt block: dicom-parser reads (and
    // allocates for) what comes before a corrupt block.
    let mut stream = inflating()?;
    let mut buffer = vec![0u8; 1 << 16];
    let mut end = 0u64;
    while let Ok(n @ 1..) = stream.read(&mut buffer) {
        end += n as u64;
    }
    Walker {
        from: inflating()?,
        position: 0,
        counted: 0,
        end,
        signed: None,
    }
    .walk(Encoding::ExplicitLittle, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file meta group (explicit VR little endian) naming `transfer_syntax`, then `data_set`.
    fn file(transfer_syntax: &str, data_set: &[u8]) -> Vec<u8> {
        let mut uid = transfer_syntax.as_bytes().to_vec();
        if uid.len() % 2 == 1 {
            uid.push(0);
        }
        let mut bytes = vec![0u8; 128];
        bytes.extend_from_slice(b"DICM");
        bytes.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
        bytes.extend_from_slice(&(8 + uid.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&[0x02, 0x00, 0x10, 0x00, b'U', b'I']);
        bytes.extend_from_slice(&(uid.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&uid);
        bytes.extend_from_slice(data_set);
        bytes
    }

    fn checked(bytes: &[u8]) -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.dcm");
        std::fs::write(&path, bytes).unwrap();
        check(&path)
    }

    #[test]
    fn values_within_the_file_pass_and_a_value_beyond_it_is_refused() {
        // (0010,0010) PN "DOE^J " then (7FE0,0010) OW of 4 bytes.
        let mut good = vec![0x10, 0x00, 0x10, 0x00, b'P', b'N', 6, 0];
        good.extend_from_slice(b"DOE^J ");
        good.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'W', 0, 0, 4, 0, 0, 0]);
        good.extend_from_slice(&[1, 2, 3, 4]);
        checked(&file("1.2.840.10008.1.2.1", &good)).unwrap();

        // The same pixel data declaring 4 GB - 2 bytes.
        let n = good.len();
        let mut bad = good.clone();
        bad[n - 8..n - 4].copy_from_slice(&0xFFFF_FFFEu32.to_le_bytes());
        let e = checked(&file("1.2.840.10008.1.2.1", &bad)).unwrap_err();
        assert!(
            e.to_string()
                .contains("(7FE0,0010) declares 4294967294 bytes"),
            "{e}"
        );

        // The same files without the 128-byte preamble.
        checked(&file("1.2.840.10008.1.2.1", &good)[128..]).unwrap();
        let e = checked(&file("1.2.840.10008.1.2.1", &bad)[128..]).unwrap_err();
        assert!(e.to_string().contains("(7FE0,0010)"), "{e}");
    }

    #[test]
    fn sequences_are_walked_into_and_fragments_skipped() {
        // An undefined-length sequence whose one item holds an element declared too long.
        let mut seq = vec![
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        seq.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        seq.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, b'U', b'I', 0x00, 0x40]);
        let e = checked(&file("1.2.840.10008.1.2.1", &seq)).unwrap_err();
        assert!(e.to_string().contains("(0008,1150)"), "{e}");

        // Encapsulated pixel data: an offset table and a fragment whose bytes look like a
        // header declaring 4 GB are skipped, not read as elements.
        let mut pixels = vec![
            0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        pixels.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
        pixels.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 12, 0, 0, 0]);
        pixels.extend_from_slice(&[
            0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        pixels.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0]);
        checked(&file("1.2.840.10008.1.2.4.70", &pixels)).unwrap();
    }

    #[test]
    fn numbers_are_walked_as_dicom_rs_reads_them() {
        // (0008,0016) UL declaring 6 bytes: dicom-rs reads one 4-byte number, so the next
        // header starts two bytes into the declared value, and declares 2 GB.
        let mut shifted = vec![0x08, 0x00, 0x16, 0x00, b'U', b'L', 6, 0, 1, 0, 0, 0];
        shifted.extend_from_slice(&[
            0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        let e = checked(&file("1.2.840.10008.1.2.1", &shifted)).unwrap_err();
        assert!(
            e.to_string().contains("(0010,0010) declares 2147483647"),
            "{e}"
        );
    }

    #[test]
    fn a_delimiter_tag_inside_an_item_is_an_element_with_a_value() {
        // Inside an item, dicom-rs reads (FFFE,E0DD) as a plain element: its two declared
        // bytes are a value, and the header after them declares 2 GB.
        let mut seq = vec![
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        seq.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        seq.extend_from_slice(&[0xFE, 0xFF, 0xDD, 0xE0, 2, 0, 0, 0, 0xAA, 0xBB]);
        seq.extend_from_slice(&[
            0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        let e = checked(&file("1.2.840.10008.1.2.1", &seq)).unwrap_err();
        assert!(
            e.to_string().contains("(0010,0010) declares 2147483647"),
            "{e}"
        );
    }

    #[test]
    fn deflated_data_sets_are_walked_as_they_inflate() {
        use std::io::Write;
        let deflated = |data_set: &[u8]| {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), Default::default());
            e.write_all(data_set).unwrap();
            e.finish().unwrap()
        };
        let mut good = vec![0x10, 0x00, 0x10, 0x00, b'P', b'N', 6, 0];
        good.extend_from_slice(b"DOE^J ");
        checked(&file("1.2.840.10008.1.2.1.99", &deflated(&good))).unwrap();
        let bad = [
            0x10, 0x00, 0x20, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ];
        let e = checked(&file("1.2.840.10008.1.2.1.99", &deflated(&bad))).unwrap_err();
        assert!(e.to_string().contains("(0010,0020) declares"), "{e}");
        // The same header in a stream that turns corrupt 200 kB later: dicom-rs reads the
        // header (and allocates) long before it meets the corrupt block.
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::none());
        e.write_all(&bad).unwrap();
        e.write_all(&vec![0u8; 200_000]).unwrap();
        e.flush().unwrap();
        let mut corrupt = e.get_ref().clone();
        corrupt.extend_from_slice(&[0xFF, 0xFF, 0xFF]);
        let e = checked(&file("1.2.840.10008.1.2.1.99", &corrupt)).unwrap_err();
        assert!(e.to_string().contains("(0010,0020) declares"), "{e}");
    }

    #[test]
    fn the_transfer_syntax_is_trimmed_as_dicom_rs_trims_it() {
        // "1.2.840.10008.1.2" padded with a form feed is implicit VR to dicom-rs: (0008,1150)
        // is then a UI of 4 bytes whose value looks like a header declaring 2 GB, read as
        // explicit VR; implicitly the next element declares 1 GB.
        let mut data = vec![0x08, 0x00, 0x50, 0x11, 4, 0, 0, 0, b'O', b'B', 0, 0];
        data.extend_from_slice(&[0x08, 0x00, 0x55, 0x11, 0, 0, 0, 0x40]);
        let e = checked(&file("1.2.840.10008.1.2\u{c}", &data)).unwrap_err();
        assert!(e.to_string().contains("(0008,1155) declares"), "{e}");
        // Padded to any length.
        let padded = format!("1.2.840.10008.1.2{}", " ".repeat(49));
        let e = checked(&file(&padded, &data)).unwrap_err();
        assert!(e.to_string().contains("(0008,1155) declares"), "{e}");
    }

    #[test]
    fn items_end_where_dicom_rs_counts_their_end() {
        // An item of 11 bytes holding a US value declared 3 bytes long: dicom-rs reads 2 bytes
        // but counts 3, so the item ends a byte early by its count and the next item header
        // is read from there: an undefined item whose element declares 2 GB.
        let mut seq = vec![
            0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
        ];
        seq.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 11, 0, 0, 0]);
        seq.extend_from_slice(&[0x28, 0x00, 0x10, 0x00, b'U', b'S', 3, 0, 1, 0]);
        seq.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]);
        seq.extend_from_slice(&[
            0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        let e = checked(&file("1.2.840.10008.1.2.1", &seq)).unwrap_err();
        assert!(e.to_string().contains("(0010,0010) declares"), "{e}");
    }

    #[test]
    fn signed_pixels_make_us_or_ss_elements_ss() {
        // Pixel Representation 1, then (0028,0106) ("US or SS") written as SQ of 8 bytes:
        // dicom-rs reads it as SS, a value, and then an element declaring 2 GB.
        let mut data = vec![0x28, 0x00, 0x03, 0x01, b'U', b'S', 2, 0, 1, 0];
        data.extend_from_slice(&[0x28, 0x00, 0x06, 0x01, b'S', b'Q', 0, 0, 8, 0, 0, 0]);
        data.extend_from_slice(&[0; 8]);
        data.extend_from_slice(&[
            0x10, 0x00, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0x7F,
        ]);
        let e = checked(&file("1.2.840.10008.1.2.1", &data)).unwrap_err();
        assert!(e.to_string().contains("(0010,0010) declares"), "{e}");
    }

    #[test]
    fn implicit_sequences_are_found_in_the_dictionary() {
        // Implicit VR: (0008,1115) is a sequence by the dictionary; defined length 16, one
        // item of 8 bytes holding (0008,1150) declaring 1 GB.
        let mut seq = vec![0x08, 0x00, 0x15, 0x11, 16, 0, 0, 0];
        seq.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 8, 0, 0, 0]);
        seq.extend_from_slice(&[0x08, 0x00, 0x50, 0x11, 0, 0, 0, 0x40]);
        let e = checked(&file("1.2.840.10008.1.2", &seq)).unwrap_err();
        assert!(
            e.to_string().contains("(0008,1150) declares 1073741824"),
            "{e}"
        );
    }
}
