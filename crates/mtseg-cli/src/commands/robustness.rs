//! `mtseg robustness`: how a model holds up on the brain scans of a dataset's test split when
//! they are acquired differently. Each test scan is segmented as stored and in seven
//! variants made from it (skull-stripped, resampled to 1 mm, 5 mm sagittal slices, a strong
//! bias field, noise, rotated 90 degrees in its voxel array with the header saying so, and
//! the contrast inverted as in a T2); the table gives the brain's mean Dice per variant and
//! the quality verdict of each segmentation. No `--task` is given: the model recognises the
//! task, as it does for users.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use mtseg::datasets::{Splits, Task};
use mtseg::eval::metrics::dice;
use mtseg::infer::Segmenter;
use mtseg::io::{self, Affine, Grid, Image, LabelMap};
use mtseg::preprocess::filter::{dilate, gaussian_blur_axis};
use mtseg::preprocess::normalize::percentiles;
use mtseg::preprocess::resample::{grid_with_spacing, resample_image, resample_labels};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Segment a dataset's test scans as stored and in seven acquisition variants, and tabulate
/// the mean Dice and quality verdict of each (robustness.md, .csv, .json in OUT).
#[derive(clap::Args)]
pub struct Args {
    /// The brain dataset whose test split (splits.json) is used.
    #[arg(long, default_value = "../shared/data/Dataset001_BrainTissueIXI")]
    dataset: PathBuf,
    /// Report folder.
    #[arg(short, long)]
    out: PathBuf,
    /// A model file [default: the shipped model].
    #[arg(short, long)]
    model: Option<PathBuf>,
    /// Only these variants (default: all), e.g. `--variants stored,contrast_inverted`.
    #[arg(long, value_delimiter = ',')]
    variants: Vec<String>,
    /// Also write each variant and its segmentation into OUT/images.
    #[arg(long)]
    keep_images: bool,
}

/// The variants, in the table's order.
pub const VARIANTS: [&str; 8] = [
    "stored",
    "skull_stripped",
    "resampled_1mm",
    "sagittal_5mm_slices",
    "bias_field",
    "noise",
    "rotated_90_in_header",
    "contrast_inverted",
];

/// One scan and its labels made into `variant`.
pub fn variant(name: &str, image: &Image, labels: &LabelMap) -> Result<(Image, LabelMap)> {
    let grid = &image.grid;
    Ok(match name {
        "stored" => (image.clone(), labels.clone()),
        "skull_stripped" => {
            // Everything farther than 4 mm from the labelled brain set to zero.
            let brain: Vec<bool> = labels.data.iter().map(|&l| l > 0).collect();
            let radius = grid.spacing().map(|s| (4.0 / s).round() as usize);
            let mask = dilate(&brain, grid.shape, radius);
            let data = image
                .data
                .iter()
                .zip(&mask)
                .map(|(v, m)| if *m { *v } else { 0.0 })
                .collect();
            (image.with_data(data), labels.clone())
        }
        "resampled_1mm" => {
            let target = grid_with_spacing(grid, [1.0; 3]);
            resampled(image, labels, &target)
        }
        "sagittal_5mm_slices" => {
            // Slices of 5 mm along the left-right axis: the slice profile (FWHM 5 mm), then
            // one sample per slice.
            let axis = left_right_axis(&grid.affine);
            let spacing = grid.spacing();
            let mut blurred = image.clone();
            gaussian_blur_axis(
                &mut blurred.data,
                grid.shape,
                axis,
                5.0 / 2.355 / spacing[axis],
            );
            let mut thick = spacing;
            thick[axis] = 5.0;
            resampled(&blurred, labels, &grid_with_spacing(grid, thick))
        }
        "bias_field" => {
            // Gains from about 0.45 to 2.2 across the volume: linear in one axis, quadratic
            // in another.
            let data = image
                .data
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let c = grid.coords(i);
                    let u = [0, 1, 2].map(|a| 2.0 * c[a] as f64 / grid.shape[a] as f64 - 1.0);
                    v * (0.5 * u[1] + 0.3 * u[2] * u[2] + 0.2 * u[0]).exp() as f32
                })
                .collect();
            (image.with_data(data), labels.clone())
        }
        "noise" => {
            // Rician noise of 5% of the bright end of the scan.
            let sigma = 0.05 * percentiles(&image.data, &[99.0])[0] as f64;
            let normal = Normal::new(0.0, sigma.max(1e-6)).expect("a finite sigma");
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let data = image
                .data
                .iter()
                .map(|&v| {
                    let re = v as f64 + normal.sample(&mut rng);
                    let im = normal.sample(&mut rng);
                    (re * re + im * im).sqrt() as f32
                })
                .collect();
            (image.with_data(data), labels.clone())
        }
        "rotated_90_in_header" => (rotated_90(image), rotated_90(labels)),
        "contrast_inverted" => {
            // Inside the head, bright becomes dark: white matter darkest, CSF brightest, as
            // in a T2; the air stays dark.
            let p = percentiles(&image.data, &[1.0, 99.0]);
            let air = p[0] + 0.05 * (p[1] - p[0]);
            let data = image
                .data
                .iter()
                .map(|&v| {
                    if v > air {
                        (p[1] - v).max(0.0) + air
                    } else {
                        v
                    }
                })
                .collect();
            (image.with_data(data), labels.clone())
        }
        other => bail!("unknown variant '{other}' (one of {})", VARIANTS.join(", ")),
    })
}

fn resampled(image: &Image, labels: &LabelMap, target: &Grid) -> (Image, LabelMap) {
    let mut resampled = resample_image(image, target);
    resampled.provenance = image.provenance.clone();
    let mut on_target = resampled.with_data(resample_labels(labels, target));
    on_target.provenance = labels.provenance.clone();
    (resampled, on_target)
}

/// The voxel axis closest to the world's left-right axis.
fn left_right_axis(affine: &Affine) -> usize {
    (0..3)
        .max_by(|&a, &b| affine[(0, a)].abs().total_cmp(&affine[(0, b)].abs()))
        .expect("three axes")
}

/// The voxel array turned by 90 degrees in the plane of its first two axes (the first axis
/// becomes the second, the second the reversed first), with the affine turned with it: the
/// same world content, stored another way.
fn rotated_90<T: Copy>(volume: &io::Volume<T>) -> io::Volume<T> {
    let [nx, ny, nz] = volume.grid.shape;
    // New voxel (i, j, k) holds old voxel (j, ny - 1 - i, k).
    let mut index_map = Affine::identity();
    index_map[(0, 0)] = 0.0;
    index_map[(0, 1)] = 1.0;
    index_map[(1, 0)] = -1.0;
    index_map[(1, 1)] = 0.0;
    index_map[(1, 3)] = (ny - 1) as f64;
    let grid = Grid::new([ny, nx, nz], volume.grid.affine * index_map);
    let mut data = Vec::with_capacity(volume.data.len());
    for k in 0..nz {
        for j in 0..nx {
            for i in 0..ny {
                data.push(volume.at(j, ny - 1 - i, k));
            }
        }
    }
    let mut rotated = volume.with_data(data);
    rotated.grid = grid;
    rotated
}

/// One segmented variant of one scan.
#[derive(serde::Serialize)]
struct Row {
    variant: String,
    case: String,
    task: Option<String>,
    /// Per class name.
    dice: BTreeMap<String, f64>,
    mean_dice: f64,
    quality_ok: bool,
    warnings: Vec<String>,
    seconds: f64,
}

pub fn run(args: Args) -> Result<()> {
    let variants: Vec<&str> = if args.variants.is_empty() {
        VARIANTS.to_vec()
    } else {
        args.variants.iter().map(String::as_str).collect()
    };
    let task = Task::open(&args.dataset)?;
    let split = Splits::find_for(&task)?.split_for(&task)?;
    if split.test.is_empty() {
        bail!("{}: the split has no test case", args.dataset.display());
    }
    let segmenter = match &args.model {
        Some(path) => Segmenter::builder().model(path.clone()).build()?,
        None => Segmenter::builder().build()?,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("{}: cannot create", args.out.display()))?;
    let images = args.out.join("images");
    if args.keep_images {
        std::fs::create_dir_all(&images)
            .with_context(|| format!("{}: cannot create", images.display()))?;
    }
    let mut rows = Vec::new();
    for id in &split.test {
        let case = task
            .case(id)
            .with_context(|| format!("{}: no case {id}", args.dataset.display()))?;
        let (image, labels) = task.load_case(case)?;
        let labels = labels.with_context(|| format!("{id}: the test case has no label map"))?;
        for &name in &variants {
            let (image, labels) = variant(name, &image, &labels)?;
            let started = Instant::now();
            let segmented = segmenter.segment(&image)?;
            let seconds = started.elapsed().as_secs_f64();
            let recognised = segmented.summary.task.as_deref() == Some(task.name.as_str());
            let dice: BTreeMap<String, f64> = task
                .classes
                .iter()
                .map(|(class, label)| {
                    let d = if recognised {
                        dice(&segmented.labels.data, &labels.data, *label)
                    } else {
                        0.0
                    };
                    (class.clone(), d)
                })
                .collect();
            let mean_dice = dice.values().sum::<f64>() / dice.len().max(1) as f64;
            let quality = &segmented.summary.quality;
            println!(
                "{id} {name}: mean Dice {mean_dice:.3}, quality {} ({:.1} s)",
                if quality.ok { "ok" } else { "WARNING" },
                seconds
            );
            for warning in &quality.warnings {
                println!("    {warning}");
            }
            if args.keep_images {
                io::write_image(&images.join(format!("{id}_{name}.nii.gz")), &image)?;
                io::write_labels(
                    &images.join(format!("{id}_{name}_seg.nii.gz")),
                    &segmented.labels,
                )?;
                io::write_labels(&images.join(format!("{id}_{name}_ref.nii.gz")), &labels)?;
            }
            rows.push(Row {
                variant: name.to_string(),
                case: id.clone(),
                task: segmented.summary.task.clone(),
                dice,
                mean_dice,
                quality_ok: quality.ok,
                warnings: quality.warnings.clone(),
                seconds,
            });
        }
    }
    write_reports(&args.out, &rows, &variants, &split.test, segmenter.source())?;
    println!("wrote {}", args.out.join("robustness.md").display());
    Ok(())
}

fn write_reports(
    out: &Path,
    rows: &[Row],
    variants: &[&str],
    cases: &[String],
    model: &Path,
) -> Result<()> {
    let mut md = format!(
        "# Robustness on the test split\n\nModel: `{}`. Brain mean Dice (six classes) of each \
         test scan per variant, without `--task`; a scan recognised as another task counts \
         as 0. `ok`: segmentations whose quality verdict had no warning.\n\n| variant | {} | \
         mean | quality ok |\n|---|{}---|---|\n",
        model.display(),
        cases.join(" | "),
        "---|".repeat(cases.len())
    );
    let mut csv = String::from("variant,case,task,mean_dice,quality_ok,seconds\n");
    for &name in variants {
        let of: Vec<&Row> = rows.iter().filter(|r| r.variant == name).collect();
        let per_case: Vec<String> = cases
            .iter()
            .map(|c| {
                of.iter()
                    .find(|r| &r.case == c)
                    .map_or("-".into(), |r| format!("{:.3}", r.mean_dice))
            })
            .collect();
        let mean = of.iter().map(|r| r.mean_dice).sum::<f64>() / of.len().max(1) as f64;
        let ok = of.iter().filter(|r| r.quality_ok).count();
        md.push_str(&format!(
            "| {name} | {} | **{mean:.3}** | {ok} of {} |\n",
            per_case.join(" | "),
            of.len()
        ));
        for r in of {
            csv.push_str(&format!(
                "{},{},{},{:.4},{},{:.1}\n",
                r.variant,
                r.case,
                r.task.as_deref().unwrap_or(""),
                r.mean_dice,
                r.quality_ok,
                r.seconds
            ));
        }
    }
    let warned: Vec<String> = rows
        .iter()
        .filter(|r| !r.quality_ok)
        .map(|r| format!("- {} {}: {}", r.case, r.variant, r.warnings.join("; ")))
        .collect();
    if !warned.is_empty() {
        md.push_str("\nWarnings:\n\n");
        md.push_str(&warned.join("\n"));
        md.push('\n');
    }
    mtseg::io::atomic::write_bytes(&out.join("robustness.md"), md.as_bytes())?;
    mtseg::io::atomic::write_bytes(&out.join("robustness.csv"), csv.as_bytes())?;
    mtseg::io::atomic::write_json(&out.join("robustness.json"), &rows)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtseg::io::DataType;

    /// A 2 mm scan stored P, S, R like the IXI scans: intensity and label vary along each
    /// axis so that every variant's geometry shows.
    fn scan() -> (Image, LabelMap) {
        let mut affine = Affine::zeros();
        affine[(1, 0)] = -2.0;
        affine[(2, 1)] = 2.0;
        affine[(0, 2)] = 2.0;
        affine[(3, 3)] = 1.0;
        let grid = Grid::new([12, 10, 8], affine);
        let labels: Vec<u16> = (0..grid.len())
            .map(|i| {
                let [x, y, z] = grid.coords(i);
                u16::from((3..9).contains(&x) && (2..8).contains(&y) && (2..6).contains(&z))
                    * (1 + u16::from(z >= 4))
            })
            .collect();
        let image = io::Volume::filled(grid, 0f32, DataType::F32)
            .with_data(labels.iter().map(|&l| 100.0 + 300.0 * l as f32).collect());
        let label_map = image.with_data(labels);
        (image, label_map)
    }

    #[test]
    fn every_variant_keeps_the_world_its_labels_describe() {
        let (image, labels) = scan();
        for name in VARIANTS {
            let (i, l) = variant(name, &image, &labels).unwrap();
            assert_eq!(i.grid, l.grid, "{name}: image and labels on one grid");
            assert_eq!(i.data.len(), l.data.len(), "{name}");
        }
        // Skull stripping zeroes what is far from the brain, and nothing inside it.
        let (stripped, _) = variant("skull_stripped", &image, &labels).unwrap();
        assert_eq!(stripped.data[0], 0.0);
        assert!(
            stripped
                .data
                .iter()
                .zip(&labels.data)
                .all(|(v, l)| *l == 0 || *v > 0.0)
        );
        // Thick slices: 5 mm along the left-right axis (the third voxel axis here) only.
        let (thick, _) = variant("sagittal_5mm_slices", &image, &labels).unwrap();
        let spacing = thick.grid.spacing();
        assert!((spacing[2] - 5.0).abs() < 0.6 && (spacing[0] - 2.0).abs() < 1e-9);
        // Rotated in its array, the same world: a voxel's world position holds the same label.
        let (rotated, rotated_labels) = variant("rotated_90_in_header", &image, &labels).unwrap();
        assert_eq!(rotated.grid.shape, [10, 12, 8]);
        for i in 0..rotated.grid.len() {
            let world = rotated.grid.world(rotated.grid.coords(i).map(|c| c as f64));
            let inverse = labels.grid.affine.try_inverse().unwrap();
            let v = inverse * nalgebra::Vector4::new(world[0], world[1], world[2], 1.0);
            let old = labels.at(
                v[0].round() as usize,
                v[1].round() as usize,
                v[2].round() as usize,
            );
            assert_eq!(rotated_labels.data[i], old);
        }
        // The inversion makes the brightest tissue the darkest; the air stays as it was.
        let (inverted, _) = variant("contrast_inverted", &image, &labels).unwrap();
        let of = |label: u16| labels.data.iter().position(|&l| l == label).unwrap();
        assert!(image.data[of(2)] > image.data[of(1)]);
        assert!(inverted.data[of(2)] < inverted.data[of(1)]);
        assert_eq!(inverted.data[of(0)], image.data[of(0)]);
        assert!(variant("mirrored", &image, &labels).is_err());
    }
}
