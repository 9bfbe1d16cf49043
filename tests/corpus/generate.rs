//! Generator of the malformed-input corpus: broken and borderline NIfTI, NRRD, MetaImage
//! files and nnU-Net dataset folders, each with the outcome mtseg must produce. Used by the
//! CLI's corpus tests (crates/mtseg-cli/tests/corpus.rs) and to seed the fuzzers
//! (`MTSEG_WRITE_CORPUS=tests/corpus/files cargo test -p mtseg-cli --test corpus`).
//!
//! Only `std` and `flate2`: the corpus must not depend on the code it tests.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What reading a corpus entry must give.
#[derive(Clone, Debug)]
pub enum Expect {
    /// A clean error whose one line names the file and contains this text.
    Error(&'static str),
    /// Readable (possibly with a warning).
    Ok,
    /// Described by `info` (a 4-D file), refused with this text wherever one 3-D volume is
    /// needed.
    InfoOnly(&'static str),
}

/// A file of the corpus.
pub struct FileCase {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub expect: Expect,
    /// The file is a label map (checked by `datasets check` rather than `info`).
    pub label_map: bool,
}

/// A dataset folder of the corpus.
pub struct DatasetCase {
    pub name: &'static str,
    pub expect: Expect,
}

/// Fields of a NIfTI-1 header we vary; everything else is a valid 4x4x4 float32 image.
#[derive(Clone)]
pub struct Nifti1 {
    pub sizeof_hdr: i32,
    pub dim: [i16; 8],
    pub datatype: i16,
    pub bitpix: i16,
    pub pixdim: [f32; 8],
    pub vox_offset: f32,
    pub scl_slope: f32,
    pub scl_inter: f32,
    pub qform_code: i16,
    pub sform_code: i16,
    pub magic: [u8; 4],
}

impl Default for Nifti1 {
    fn default() -> Self {
        Nifti1 {
            sizeof_hdr: 348,
            dim: [3, 4, 4, 4, 1, 1, 1, 1],
            datatype: 16,
            bitpix: 32,
            pixdim: [1.0; 8],
            vox_offset: 352.0,
            scl_slope: 1.0,
            scl_inter: 0.0,
            qform_code: 1,
            sform_code: 0,
            magic: *b"n+1\0",
        }
    }
}

impl Nifti1 {
    /// Header, empty extension block and `data`.
    pub fn bytes(&self, data: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 352];
        let put = |h: &mut Vec<u8>, at: usize, b: &[u8]| h[at..at + b.len()].copy_from_slice(b);
        put(&mut h, 0, &self.sizeof_hdr.to_le_bytes());
        for (i, d) in self.dim.iter().enumerate() {
            put(&mut h, 40 + 2 * i, &d.to_le_bytes());
        }
        put(&mut h, 70, &self.datatype.to_le_bytes());
        put(&mut h, 72, &self.bitpix.to_le_bytes());
        for (i, p) in self.pixdim.iter().enumerate() {
            put(&mut h, 76 + 4 * i, &p.to_le_bytes());
        }
        put(&mut h, 108, &self.vox_offset.to_le_bytes());
        put(&mut h, 112, &self.scl_slope.to_le_bytes());
        put(&mut h, 116, &self.scl_inter.to_le_bytes());
        put(&mut h, 252, &self.qform_code.to_le_bytes());
        put(&mut h, 254, &self.sform_code.to_le_bytes());
        // sform rows: identity with 2 mm voxels.
        for (row, values) in [
            [2f32, 0.0, 0.0, 0.0],
            [0.0, 2.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
        ]
        .iter()
        .enumerate()
        {
            for (c, v) in values.iter().enumerate() {
                put(&mut h, 280 + 16 * row + 4 * c, &v.to_le_bytes());
            }
        }
        put(&mut h, 344, &self.magic);
        h.extend_from_slice(data);
        h
    }
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("writing to memory");
    e.finish().expect("writing to memory")
}

fn image64() -> Vec<f32> {
    (0..64).map(|i| i as f32).collect()
}

/// Every file case of the corpus.
/// A DICOM element: group, element, VR, value.
type Element = (u16, u16, &'static str, Vec<u8>);

/// A DICOM file (explicit VR little endian after its meta group) of `elements`, which must be
/// in tag order; `syntax` is its transfer syntax.
fn dicom(syntax: &str, elements: &[Element]) -> Vec<u8> {
    fn element(out: &mut Vec<u8>, (group, number, vr, value): &Element) {
        let mut value = value.clone();
        if value.len() % 2 == 1 {
            value.push(if *vr == "UI" || *vr == "OB" { 0 } else { b' ' });
        }
        out.extend(group.to_le_bytes());
        out.extend(number.to_le_bytes());
        out.extend(vr.as_bytes());
        if ["OB", "OW", "SQ", "UN", "UT"].contains(vr) {
            out.extend([0, 0]);
            out.extend((value.len() as u32).to_le_bytes());
        } else {
            out.extend((value.len() as u16).to_le_bytes());
        }
        out.extend(value);
    }
    let text = |s: &str| s.as_bytes().to_vec();
    let mut meta = Vec::new();
    for e in [
        (2, 1, "OB", vec![0, 1]),
        (2, 2, "UI", text("1.2.840.10008.5.1.4.1.1.4")),
        (2, 3, "UI", text("1.2.3.4.5")),
        (2, 0x10, "UI", text(syntax)),
    ] {
        element(&mut meta, &e);
    }
    let mut out = vec![0u8; 128];
    out.extend(b"DICM");
    element(
        &mut out,
        &(2, 0, "UL", (meta.len() as u32).to_le_bytes().to_vec()),
    );
    out.extend(meta);
    for e in elements {
        element(&mut out, e);
    }
    out
}

/// A file of a 4 x 4 MR slice (16-bit), with `change` applied to its elements.
fn dicom_slice(change: &dyn Fn(&mut Vec<Element>)) -> Vec<u8> {
    dicom_slice_in("1.2.840.10008.1.2.1", change)
}

/// The same slice under another transfer syntax (its pixel data left as it is).
fn dicom_slice_in(syntax: &str, change: &dyn Fn(&mut Vec<Element>)) -> Vec<u8> {
    let text = |s: &str| s.as_bytes().to_vec();
    let us = |v: u16| v.to_le_bytes().to_vec();
    let mut elements = vec![
        (0x0008, 0x0016, "UI", text("1.2.840.10008.5.1.4.1.1.4")),
        (0x0008, 0x0018, "UI", text("1.2.3.4.5")),
        (0x0008, 0x0060, "CS", text("MR")),
        (0x0020, 0x000E, "UI", text("1.2.3.4.6")),
        (0x0020, 0x0032, "DS", text("-10\\-20\\30")),
        (0x0020, 0x0037, "DS", text("1\\0\\0\\0\\1\\0")),
        (0x0028, 0x0002, "US", us(1)),
        (0x0028, 0x0004, "CS", text("MONOCHROME2")),
        (0x0028, 0x0010, "US", us(4)),
        (0x0028, 0x0011, "US", us(4)),
        (0x0028, 0x0030, "DS", text("1\\1")),
        (0x0028, 0x0100, "US", us(16)),
        (0x0028, 0x0101, "US", us(12)),
        (0x0028, 0x0102, "US", us(11)),
        (0x0028, 0x0103, "US", us(0)),
        (
            0x7FE0,
            0x0010,
            "OW",
            (0..16u16).flat_map(|v| (v * 100).to_le_bytes()).collect(),
        ),
    ];
    change(&mut elements);
    dicom(syntax, &elements)
}

/// Replaces (or inserts, in tag order) an element of a slice.
fn set(elements: &mut Vec<Element>, tag: (u16, u16), vr: &'static str, value: Vec<u8>) {
    elements.retain(|e| (e.0, e.1) != tag);
    let at = elements.partition_point(|e| (e.0, e.1) < tag);
    elements.insert(at, (tag.0, tag.1, vr, value));
}

pub fn file_cases() -> Vec<FileCase> {
    let valid = Nifti1::default();
    let data = floats(&image64());
    let file = |name, bytes, expect| FileCase {
        name,
        bytes,
        expect,
        label_map: false,
    };
    let with = |f: &dyn Fn(&mut Nifti1)| {
        let mut h = valid.clone();
        f(&mut h);
        h.bytes(&data)
    };
    let good = valid.bytes(&data);
    let mut nan = image64();
    nan[3] = f32::NAN;
    let mut inf = image64();
    inf[5] = f32::INFINITY;
    inf[6] = f32::NEG_INFINITY;
    let nrrd = |header: &str, data: &[u8]| {
        let mut b = header.as_bytes().to_vec();
        b.extend_from_slice(data);
        b
    };
    let mut nifti2 = vec![0u8; 200];
    nifti2[..4].copy_from_slice(&540i32.to_le_bytes());
    nifti2[4..12].copy_from_slice(b"n+2\0\r\n\x1a\n");
    vec![
        file(
            "nifti_truncated.nii",
            good[..good.len() - 100].to_vec(),
            Expect::Error("truncated"),
        ),
        file(
            "nifti_truncated_stream.nii.gz",
            gzip(&good)[..60].to_vec(),
            Expect::Error("truncated"),
        ),
        file(
            "nifti_wrong_magic.nii",
            with(&|h| h.magic = *b"xx1\0"),
            Expect::Error("magic"),
        ),
        file(
            "nifti_sizeof_hdr.nii",
            with(&|h| h.sizeof_hdr = 349),
            Expect::Error("sizeof_hdr"),
        ),
        file(
            "nifti_vox_offset_past_end.nii",
            with(&|h| h.vox_offset = 100_000.0),
            Expect::Error("truncated"),
        ),
        file(
            "nifti_vox_offset_inside_header.nii",
            with(&|h| h.vox_offset = 12.0),
            Expect::Error("vox_offset"),
        ),
        file(
            "nifti_dim_zero.nii",
            with(&|h| h.dim[2] = 0),
            Expect::Error("dim[2] is 0"),
        ),
        file(
            "nifti_dim_negative.nii",
            with(&|h| h.dim[1] = -5),
            Expect::Error("dim[1] is -5"),
        ),
        file(
            "nifti_ndim_zero.nii",
            with(&|h| h.dim[0] = 0),
            Expect::Error("dim[0] is 0"),
        ),
        file(
            "nifti_dims_overflow.nii",
            with(&|h| {
                h.dim = [7, 32767, 32767, 32767, 1, 32767, 32767, 32767];
                h.datatype = 64;
            }),
            Expect::Error("overflow"),
        ),
        file(
            "nifti_needs_68_gib.nii",
            with(&|h| {
                h.dim = [3, 32767, 32767, 64, 1, 1, 1, 1];
                h.datatype = 2;
            }),
            Expect::Error("refusing"),
        ),
        file(
            "nifti_bad_datatype.nii",
            with(&|h| h.datatype = 3),
            Expect::Error("datatype code 3"),
        ),
        file(
            "nifti_complex.nii",
            with(&|h| h.datatype = 32),
            Expect::Error("not a scalar image"),
        ),
        file(
            "nifti_pixdim_zero.nii",
            with(&|h| h.pixdim[2] = 0.0),
            Expect::Error("pixdim"),
        ),
        file(
            "nifti_pixdim_negative.nii",
            with(&|h| h.pixdim[1] = -1.0),
            Expect::Error("pixdim"),
        ),
        file(
            "nifti_pixdim_nan.nii",
            with(&|h| h.pixdim[3] = f32::NAN),
            Expect::Error("pixdim"),
        ),
        file(
            "nifti_no_transform_zero_spacing.nii",
            with(&|h| {
                h.qform_code = 0;
                h.pixdim[1] = 0.0;
            }),
            Expect::Error("pixdim"),
        ),
        file(
            "nifti_nan_voxels.nii",
            valid.bytes(&floats(&nan)),
            Expect::Ok,
        ),
        file(
            "nifti_inf_voxels.nii.gz",
            gzip(&valid.bytes(&floats(&inf))),
            Expect::Ok,
        ),
        file(
            "nifti_scl_slope_zero.nii",
            with(&|h| h.scl_slope = 0.0),
            Expect::Ok,
        ),
        file(
            "nifti_scl_slope_nan.nii",
            with(&|h| h.scl_slope = f32::NAN),
            Expect::Ok,
        ),
        file(
            "nifti_scl_inter_inf.nii",
            with(&|h| {
                h.scl_slope = 2.0;
                h.scl_inter = f32::INFINITY;
            }),
            Expect::Error("scl_inter"),
        ),
        file(
            "nifti_4d.nii",
            {
                let mut h = valid.clone();
                h.dim = [4, 4, 4, 2, 2, 1, 1, 1];
                h.bytes(&data)
            },
            Expect::InfoOnly("a 4-D file of 2 volumes"),
        ),
        file(
            "nifti_5d.nii",
            {
                let mut h = valid.clone();
                h.dim = [5, 4, 4, 2, 1, 2, 1, 1];
                h.bytes(&data)
            },
            Expect::InfoOnly("a 4-D file of 2 volumes"),
        ),
        file(
            "nifti_2d.nii",
            {
                let mut h = valid.clone();
                h.dim = [2, 8, 8, 1, 1, 1, 1, 1];
                h.bytes(&data)
            },
            Expect::Ok,
        ),
        file("nifti_empty.nii", Vec::new(), Expect::Error("truncated")),
        file(
            "nifti_garbage.nii.gz",
            (0..400u32).map(|i| (i * 7919 % 251) as u8).collect(),
            Expect::Error("corrupt compressed data"),
        ),
        file("nifti2_truncated.nii", nifti2, Expect::Error("truncated")),
        file(
            "nifti_sform_only.nii",
            with(&|h| {
                h.sform_code = 1;
                h.qform_code = 0;
            }),
            Expect::Ok,
        ),
        file(
            "nrrd_missing_sizes.nrrd",
            nrrd(
                "NRRD0004\ntype: float\ndimension: 3\nencoding: raw\n\n",
                &data,
            ),
            Expect::Error("'sizes'"),
        ),
        file(
            "nrrd_bad_type.nrrd",
            nrrd(
                "NRRD0004\ntype: block\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n",
                &data,
            ),
            Expect::Error("type 'block'"),
        ),
        file(
            "nrrd_truncated.nrrd",
            nrrd(
                "NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n\n",
                &data[..100],
            ),
            Expect::Error("truncated"),
        ),
        file(
            "nrrd_bzip2.nrrd",
            nrrd(
                "NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nencoding: bzip2\n\n",
                &data,
            ),
            Expect::Error("encoding 'bzip2'"),
        ),
        file(
            "nrrd_4d.nrrd",
            nrrd(
                "NRRD0004\ntype: float\ndimension: 4\nsizes: 2 4 4 2\nencoding: raw\n\n",
                &data,
            ),
            Expect::Error("3-D volume"),
        ),
        file(
            "nrrd_zero_spacing.nrrd",
            nrrd(
                "NRRD0004\ntype: float\ndimension: 3\nsizes: 4 4 4\nspace: left-posterior-superior\nspace directions: (0,0,0) (0,1,0) (0,0,1)\nencoding: raw\n\n",
                &data,
            ),
            Expect::Error("singular"),
        ),
        file(
            "nrrd_huge.nrrd",
            nrrd(
                "NRRD0004\ntype: double\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\n\n",
                &data,
            ),
            Expect::Error("refusing"),
        ),
        file(
            "mha_no_datafile.mha",
            b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\n".to_vec(),
            Expect::Error("ElementDataFile"),
        ),
        file(
            "mha_bad_type.mha",
            nrrd(
                "NDims = 3\nDimSize = 4 4 4\nElementType = MET_STRING\nElementDataFile = LOCAL\n",
                &data,
            ),
            Expect::Error("MET_STRING"),
        ),
        file(
            "mha_truncated.mha",
            nrrd(
                "NDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n",
                &data[..10],
            ),
            Expect::Error("truncated"),
        ),
        file(
            "mhd_missing_raw.mhd",
            b"NDims = 3\nDimSize = 4 4 4\nElementType = MET_FLOAT\nElementDataFile = absent.raw\n"
                .to_vec(),
            Expect::Error("absent.raw"),
        ),
        file(
            "mha_binary_garbage.mha",
            (0..5000u32).map(|i| (i * 31 % 256) as u8).collect(),
            Expect::Error(""),
        ),
        file("dicom_valid.dcm", dicom_slice(&|_| {}), Expect::Ok),
        file(
            "dicom_truncated.dcm",
            {
                let whole = dicom_slice(&|_| {});
                whole[..whole.len() - 20].to_vec()
            },
            Expect::Error(""),
        ),
        file(
            "dicom_no_pixel_data.dcm",
            dicom_slice(&|e| e.retain(|x| x.0 != 0x7FE0)),
            Expect::Error("pixel data"),
        ),
        file(
            "dicom_frames_without_groups.dcm",
            dicom_slice(&|e| set(e, (0x0028, 0x0008), "IS", b"3".to_vec())),
            Expect::Error("3 frames"),
        ),
        file(
            "dicom_absurd_size.dcm",
            dicom_slice(&|e| {
                set(e, (0x0028, 0x0010), "US", 65535u16.to_le_bytes().to_vec());
                set(e, (0x0028, 0x0011), "US", 65535u16.to_le_bytes().to_vec());
            }),
            Expect::Error("not an image"),
        ),
        file(
            "dicom_colour.dcm",
            dicom_slice(&|e| set(e, (0x0028, 0x0002), "US", 3u16.to_le_bytes().to_vec())),
            Expect::Error("colour"),
        ),
        file(
            "dicom_no_position.dcm",
            dicom_slice(&|e| e.retain(|x| (x.0, x.1) != (0x0020, 0x0032))),
            Expect::Error("ImagePositionPatient"),
        ),
        file(
            "dicom_jpeg_ls.dcm",
            dicom_slice_in("1.2.840.10008.1.2.4.80", &|_| {}),
            Expect::Error("JPEG-LS"),
        ),
        file(
            "dicom_garbage_after_magic.dcm",
            {
                let mut bytes = vec![0u8; 128];
                bytes.extend(b"DICM");
                bytes.extend((0..3000u32).map(|i| (i * 73 % 251) as u8));
                bytes
            },
            Expect::Error("not a readable DICOM file"),
        ),
        FileCase {
            name: "labels_fractional.nii.gz",
            bytes: gzip(&valid.bytes(&floats(&[0.5; 64]))),
            expect: Expect::Error("not a label map"),
            label_map: true,
        },
        FileCase {
            name: "labels_negative.nii.gz",
            bytes: gzip(&{
                let mut h = valid.clone();
                h.datatype = 4;
                h.bitpix = 16;
                h.bytes(
                    &(0..64)
                        .flat_map(|i| (if i == 3 { -1i16 } else { 0 }).to_le_bytes())
                        .collect::<Vec<u8>>(),
                )
            }),
            expect: Expect::Error("not a label map"),
            label_map: true,
        },
    ]
}

/// A valid 4x4x4 image or label map as NIfTI-1 bytes (gzipped).
fn nifti_volume(values: &[f32], pixdim: f32) -> Vec<u8> {
    let mut h = Nifti1::default();
    h.pixdim[1] = pixdim;
    gzip(&h.bytes(&floats(values)))
}

/// Writes the dataset cases under `root`; returns them with their folders.
pub fn write_dataset_cases(root: &Path) -> Vec<(DatasetCase, PathBuf)> {
    let json = r#"{"channel_names": {"0": "MR"}, "labels": {"background": 0, "organ": 1}, "numTraining": 2, "file_ending": ".nii.gz"}"#;
    let image = nifti_volume(&image64(), 1.0);
    let labels: Vec<f32> = (0..64)
        .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
        .collect();
    let label = nifti_volume(&labels, 1.0);
    // Two valid cases, then the replacements each case makes.
    let files = |replace: &[(&str, &Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<(String, Vec<u8>)> = [
            ("imagesTr/a_0000.nii.gz", &image),
            ("labelsTr/a.nii.gz", &label),
            ("imagesTr/b_0000.nii.gz", &image),
            ("labelsTr/b.nii.gz", &label),
        ]
        .iter()
        .map(|(p, b)| (p.to_string(), (*b).clone()))
        .collect();
        for (p, b) in replace {
            v.retain(|(q, _)| q != p);
            v.push((p.to_string(), (*b).clone()));
        }
        v
    };
    let make = |name: &'static str, json: &str, files: Vec<(String, Vec<u8>)>, expect: Expect| {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("imagesTr")).expect("temporary folder");
        std::fs::create_dir_all(dir.join("labelsTr")).expect("temporary folder");
        std::fs::write(dir.join("dataset.json"), json).expect("temporary folder");
        for (path, bytes) in files {
            std::fs::write(dir.join(path), bytes).expect("temporary folder");
        }
        (DatasetCase { name, expect }, dir)
    };
    let shifted = nifti_volume(&labels, 3.0);
    let bad_value = nifti_volume(
        &(0..64)
            .map(|i| if i == 0 { 7.0 } else { 0.0 })
            .collect::<Vec<_>>(),
        1.0,
    );
    let h = Nifti1 {
        dim: [3, 4, 4, 5, 1, 1, 1, 1],
        ..Nifti1::default()
    };
    let bigger = gzip(&h.bytes(&floats(&[0.0; 80])));
    let mut cases = vec![
        make("ds_valid", json, files(&[]), Expect::Ok),
        make(
            "ds_missing_labels_field",
            r#"{"channel_names": {"0": "MR"}, "numTraining": 2, "file_ending": ".nii.gz"}"#,
            files(&[]),
            Expect::Error("missing field `labels`"),
        ),
        make(
            "ds_wrong_types",
            r#"{"channel_names": {"0": "MR"}, "labels": ["background", "organ"], "numTraining": "two", "file_ending": ".nii.gz"}"#,
            files(&[]),
            Expect::Error("invalid type"),
        ),
        make(
            "ds_not_json",
            "{ this is not json",
            files(&[]),
            Expect::Error("not a valid nnU-Net dataset.json"),
        ),
        make(
            "ds_no_background",
            r#"{"channel_names": {"0": "MR"}, "labels": {"organ": 1}, "numTraining": 2, "file_ending": ".nii.gz"}"#,
            files(&[]),
            Expect::Error("background"),
        ),
        make(
            "ds_two_channels",
            r#"{"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "organ": 1}, "numTraining": 2, "file_ending": ".nii.gz"}"#,
            files(&[]),
            Expect::Error("single-channel"),
        ),
        make(
            "ds_affine_mismatch",
            json,
            files(&[("labelsTr/b.nii.gz", &shifted)]),
            Expect::Error("affine differs"),
        ),
        make(
            "ds_shape_mismatch",
            json,
            files(&[("labelsTr/b.nii.gz", &bigger)]),
            Expect::Error("shape"),
        ),
        make(
            "ds_unlisted_label",
            json,
            files(&[("labelsTr/a.nii.gz", &bad_value)]),
            Expect::Error("label value 7"),
        ),
    ];
    let missing = make(
        "ds_missing_label_file",
        json,
        files(&[]),
        Expect::Error("missing"),
    );
    std::fs::remove_file(missing.1.join("labelsTr/b.nii.gz")).expect("just written");
    cases.push(missing);
    let no_json = make(
        "ds_no_dataset_json",
        json,
        files(&[]),
        Expect::Error("dataset.json"),
    );
    std::fs::remove_file(no_json.1.join("dataset.json")).expect("just written");
    cases.push(no_json);
    cases
}
