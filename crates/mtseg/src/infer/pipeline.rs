//! Segmenting a scan: reorient and resample it as the model was trained, normalise it, take
//! a first look (a few slices) to recognise the task and find its foreground, segment it
//! densely with the chosen task, bring the label map back to the scan's exact grid, measure
//! the volumes and draw the quality verdict; [`segment_file`] reads and writes the files and
//! the JSON sidecar around [`Segmenter::segment`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::postprocess::keep_largest_component;
use super::quality::{self, Evidence, LOW_PROBABILITY, Quality};
use super::{NetworkLabels, Recognition, TaskChoice, segment};
use crate::datasets::Modality;
use crate::device::Hardware;
use crate::engine::{Dense, DenseSettings, NetworkInput, Sampled, dense_engine};
use crate::error::{Error, Result};
use crate::io::{self, Image, LabelMap};
use crate::model::output::task_probabilities;
use crate::model::{Model, ModelMeta, OutputMode};
use crate::preprocess::normalize::{body_threshold, foreground_mask, normalise_over, percentiles};
use crate::preprocess::{self, Prepared, Preprocessing};

/// Slices per orientation of the first look at a scan.
const FIRST_LOOK_SLICES: usize = 6;

/// A model ready to segment, on the CPU kernels or on a GPU: built by [`Segmenter::builder`].
///
/// ```no_run
/// use mtseg::infer::Segmenter;
///
/// # fn main() -> mtseg::Result<()> {
/// // The built-in model on the CPU; the task recognised from the scan.
/// let segmenter = Segmenter::builder().build()?;
/// let image = mtseg::io::read_image("t1.nii.gz".as_ref())?;
/// let segmentation = segmenter.segment(&image)?;
/// println!(
///     "{:?}: {:?} ml, quality ok: {}",
///     segmentation.summary.task, segmentation.summary.volumes_ml, segmentation.summary.quality.ok
/// );
/// mtseg::io::write_labels("t1_seg.nii.gz".as_ref(), &segmentation.labels)?;
/// # Ok(())
/// # }
/// ```
pub struct Segmenter {
    pub(super) meta: ModelMeta,
    pub(super) engine: Box<dyn Dense + Send>,
    pub(super) settings: DenseSettings,
    source: PathBuf,
    /// Keep only each task's largest connected object ([`keep_largest_component`]) for the
    /// tasks whose validation cases chose it (`ModelMeta::largest_component_tasks`).
    largest_component: bool,
    /// Tasks whose classes also get a pass over the scan mirrored left-right, averaged in
    /// (test-time augmentation; left-right symmetric anatomy only).
    mirrored_tasks: Vec<usize>,
    /// The task whose classes compete (`None`: recognised per scan).
    task: Option<usize>,
    /// Whether [`Segmenter::segment`] returns the winning class's probability map.
    probabilities: bool,
    /// A pool of its own when a thread count was asked for (else rayon's global pool).
    pool: Option<rayon::ThreadPool>,
}

/// How a [`Segmenter`] is made; every setting has a default (see each method).
///
/// ```no_run
/// use mtseg::device::Hardware;
/// use mtseg::infer::Segmenter;
///
/// # fn main() -> mtseg::Result<()> {
/// let segmenter = Segmenter::builder()
///     .model("models/mtseg-unet-brain-hippocampus-cta.mtseg")
///     .hardware(Hardware::Cpu)
///     .task("BrainTissueIXI")
///     .threads(2)
///     .probabilities(true)
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SegmenterBuilder {
    model: Option<PathBuf>,
    hardware: Hardware,
    task: Option<String>,
    mirrored_tasks: Vec<String>,
    largest_component: bool,
    probabilities: bool,
    threads: Option<usize>,
}

impl Default for SegmenterBuilder {
    fn default() -> Self {
        SegmenterBuilder {
            model: None,
            hardware: Hardware::Cpu,
            task: None,
            mirrored_tasks: Vec::new(),
            largest_component: true,
            probabilities: false,
            threads: None,
        }
    }
}

impl SegmenterBuilder {
    /// A model file (`.mtseg`). Default: the model built into mtseg (models/README.md).
    pub fn model(mut self, path: impl Into<PathBuf>) -> Self {
        self.model = Some(path.into());
        self
    }

    /// Where the network runs. Default: the CPU (mtseg's own kernels).
    pub fn hardware(mut self, hardware: Hardware) -> Self {
        self.hardware = hardware;
        self
    }

    /// Segment with this task's classes only. Default: the task is recognised per scan.
    pub fn task(mut self, name: impl Into<String>) -> Self {
        self.task = Some(name.into());
        self
    }

    /// Also run these tasks' classes over the scan mirrored left-right and average
    /// (test-time augmentation for left-right symmetric anatomy). Default: none.
    pub fn mirror_left_right<S: Into<String>>(
        mut self,
        tasks: impl IntoIterator<Item = S>,
    ) -> Self {
        self.mirrored_tasks = tasks.into_iter().map(Into::into).collect();
        self
    }

    /// Keep only each task's largest connected object where the model's validation chose it.
    /// Default: true.
    pub fn largest_component(mut self, keep_largest: bool) -> Self {
        self.largest_component = keep_largest;
        self
    }

    /// Return the winning class's probability per voxel with each segmentation. Default:
    /// false.
    pub fn probabilities(mut self, probabilities: bool) -> Self {
        self.probabilities = probabilities;
        self
    }

    /// Run on a pool of this many threads. Default: rayon's global pool (all cores, unless
    /// the program set it otherwise).
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Loads the model and checks every task name against it.
    pub fn build(self) -> Result<Segmenter> {
        let (model, source) = match &self.model {
            Some(path) => (Model::load_cpu(path)?, path.clone()),
            None => (
                crate::model::load_shipped()?,
                PathBuf::from(crate::model::SHIPPED_MODEL),
            ),
        };
        self.build_with(model, source)
    }

    /// [`SegmenterBuilder::build`] with a model already in memory (`source` names it in
    /// reports).
    pub fn build_with(self, model: Model, source: PathBuf) -> Result<Segmenter> {
        let (engine, settings) =
            dense_engine(&model.net, self.hardware, &self.hardware.burn_device()?);
        let task_index = |name: &str| {
            model.meta.task_index(name).ok_or_else(|| {
                Error::usage(format!(
                    "the model knows no task '{name}'; its tasks are: {}",
                    model.meta.task_names().join(", ")
                ))
            })
        };
        let task = self.task.as_deref().map(task_index).transpose()?;
        let mirrored_tasks = self
            .mirrored_tasks
            .iter()
            .map(|t| task_index(t))
            .collect::<Result<_>>()?;
        let pool = self
            .threads
            .map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .map_err(|e| Error::usage(format!("cannot start {n} threads: {e}")))
            })
            .transpose()?;
        Ok(Segmenter {
            engine,
            meta: model.meta,
            settings,
            source,
            largest_component: self.largest_component,
            mirrored_tasks,
            task,
            probabilities: self.probabilities,
            pool,
        })
    }
}

impl Segmenter {
    /// A builder with every default: the built-in model on the CPU, the task recognised.
    pub fn builder() -> SegmenterBuilder {
        SegmenterBuilder::default()
    }

    /// What the model is: its tasks, classes, preprocessing and training ranges.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The model file (or the built-in model's name).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Segments `image` (with the builder's task's classes, or the task the model
    /// recognises): the label map on the image's own grid, the winning class's probability
    /// there when the builder asked for it, and what the sidecar says.
    pub fn segment(&self, image: &Image) -> Result<Segmentation> {
        self.segment_image(image, self.probabilities)
    }

    /// [`Segmenter::segment`] with or without the probability map, on the segmenter's pool.
    fn segment_image(&self, image: &Image, want_probabilities: bool) -> Result<Segmentation> {
        match &self.pool {
            Some(pool) => pool.install(|| self.segment_here(image, want_probabilities)),
            None => self.segment_here(image, want_probabilities),
        }
    }

    fn segment_here(&self, image: &Image, want_probabilities: bool) -> Result<Segmentation> {
        if image.data.is_empty() {
            return Err(Error::usage("an empty image has nothing to segment"));
        }
        image.check(Path::new("<image in memory>"))?;
        let (run, choice) = match self.task {
            Some(t) => (self.run_task(image, t, None), Choice::given()),
            None => self.recognise(image),
        };
        Ok(self.finish(image, run, choice, want_probabilities))
    }

    /// The network's input for a prepared image.
    fn input<'a>(prepared: &'a Prepared) -> NetworkInput<'a> {
        let pad = prepared
            .image
            .data
            .iter()
            .cloned()
            .fold(f32::INFINITY, f32::min);
        NetworkInput {
            image: &prepared.image.data,
            shape: prepared.image.grid.shape,
            pad,
        }
    }

    /// The image prepared as `preprocessing` says (normalised over the body), and the
    /// network's first look at it.
    fn look(&self, image: &Image, preprocessing: &Preprocessing) -> Look {
        let prepared = preprocess::prepare_image(image, preprocessing);
        let sampled =
            self.engine
                .sampled_logits(&Self::input(&prepared), &self.settings, FIRST_LOOK_SLICES);
        Look {
            preprocessing: preprocessing.clone(),
            prepared,
            sampled,
        }
    }

    /// Segments `image` with task `t`'s classes, reusing a first look at its spacing.
    fn run_task(&self, image: &Image, t: usize, look: Option<Look>) -> Run {
        let preprocessing = &self.meta.tasks[t].preprocessing;
        let (mut prepared, sampled) = match look {
            Some(l) if &l.preprocessing == preprocessing => (l.prepared, Some(l.sampled)),
            _ => (preprocess::prepare_image(image, preprocessing), None),
        };
        let mut foreground_found = None;
        if preprocessing.normalization.needs_foreground() {
            let sampled = sampled.unwrap_or_else(|| {
                self.engine.sampled_logits(
                    &Self::input(&prepared),
                    &self.settings,
                    FIRST_LOOK_SLICES,
                )
            });
            let grid = &prepared.image.grid;
            let mut labels = vec![0u16; grid.len()];
            let group = &self.meta.layout.groups[t];
            let c = self.engine.logit_channels();
            for (v, logits) in sampled.voxels.iter().zip(sampled.logits.chunks_exact(c)) {
                labels[*v] = self.meta.layout.decide(logits, group).0;
            }
            foreground_found = Some(labels.iter().filter(|&&l| l > 0).count());
            let mask = foreground_mask(&labels, grid.shape, grid.spacing());
            normalise_over(&mut prepared.image.data, &mask);
        }
        let segmentation = segment(
            self.engine.as_ref(),
            &self.meta.layout,
            &Self::input(&prepared),
            TaskChoice::Task(t),
            &self.settings,
            &self.mirrored_tasks,
        );
        Run {
            segmentation,
            prepared,
            foreground_found,
        }
    }

    /// Without `--task`. The candidates are the tasks of the image's modality (CT is told by
    /// its Hounsfield units) whose training scans had a similar extent. In per-task mode a
    /// first look at each candidate's spacing asks the task head, and the task most sure of
    /// itself at its own spacing is segmented. In union mode the network runs densely at each
    /// candidate spacing and the run most sure of its foreground wins.
    fn recognise(&self, image: &Image) -> (Run, Choice) {
        let meta = &self.meta;
        let modality = if looks_like_ct(image) {
            Modality::CT
        } else {
            Modality::MR
        };
        let mut candidates: Vec<usize> = (0..meta.tasks.len())
            .filter(|&t| meta.tasks[t].modality == modality)
            .collect();
        if candidates.is_empty() {
            candidates = (0..meta.tasks.len()).collect();
        }
        let extent = image.grid.largest_extent_mm();
        let alike: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&t| {
                meta.tasks[t]
                    .expected
                    .as_ref()
                    .is_none_or(|e| (e.extent_mm[0]..=e.extent_mm[1]).contains(&extent))
            })
            .collect();
        let unlike_every_task = alike.is_empty();
        if !unlike_every_task {
            candidates = alike;
        }
        let mut preprocessings: Vec<&Preprocessing> = Vec::new();
        for &t in &candidates {
            let p = &meta.tasks[t].preprocessing;
            if !preprocessings.contains(&p) {
                preprocessings.push(p);
            }
        }
        if meta.layout.mode == OutputMode::Union {
            let best = preprocessings
                .into_iter()
                .map(|p| self.run_union(image, p))
                .max_by(|a, b| {
                    mean_foreground_probability(&a.segmentation)
                        .total_cmp(&mean_foreground_probability(&b.segmentation))
                })
                .expect("a model has at least one task");
            let choice = Choice {
                selection: "network",
                recognition: None,
                unlike_every_task,
            };
            return (best, choice);
        }
        let mut looks: Vec<Look> = preprocessings
            .into_iter()
            .map(|p| self.look(image, p))
            .collect();
        // Each candidate's probability where the image is prepared as for it.
        let mut scores = vec![0f32; meta.tasks.len()];
        for &t in &candidates {
            let look = looks
                .iter()
                .find(|l| l.preprocessing == meta.tasks[t].preprocessing)
                .expect("a look per candidate preprocessing");
            scores[t] =
                mean_task_probabilities(&look.sampled, &look.prepared.image.data, meta.tasks.len())
                    [t];
        }
        let best = candidates
            .iter()
            .copied()
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .expect("at least one candidate");
        let position = looks
            .iter()
            .position(|l| l.preprocessing == meta.tasks[best].preprocessing)
            .expect("the best task's look");
        let look = looks.swap_remove(position);
        let mut run = self.run_task(image, best, Some(look));
        run.segmentation.recognition = Some(Recognition {
            task: best,
            mean_probabilities: scores,
        });
        let choice = Choice {
            selection: "task head",
            recognition: Some(candidates),
            unlike_every_task,
        };
        (run, choice)
    }

    /// Union mode: every class competes, at one candidate spacing.
    fn run_union(&self, image: &Image, preprocessing: &Preprocessing) -> Run {
        let prepared = preprocess::prepare_image(image, preprocessing);
        let segmentation = segment(
            self.engine.as_ref(),
            &self.meta.layout,
            &Self::input(&prepared),
            TaskChoice::Automatic,
            &self.settings,
            &self.mirrored_tasks,
        );
        Run {
            segmentation,
            prepared,
            foreground_found: None,
        }
    }

    /// Post-processing, the labels back on the image's grid, volumes and the verdict.
    fn finish(
        &self,
        image: &Image,
        run: Run,
        choice: Choice,
        want_probabilities: bool,
    ) -> Segmentation {
        let meta = &self.meta;
        let space = &meta.label_space;
        let Run {
            mut segmentation,
            prepared,
            foreground_found,
        } = run;
        let postprocessed = if self.largest_component {
            meta.largest_component_tasks()
        } else {
            Vec::new()
        };
        let removed = keep_largest_component(
            &mut segmentation.labels,
            prepared.image.grid.shape,
            space,
            &postprocessed,
        );
        let mut voxels_per_task: BTreeMap<String, usize> =
            space.tasks.iter().map(|t| (t.name.clone(), 0)).collect();
        let (mut labelled, mut low_confidence, mut foreground_probability) = (0usize, 0usize, 0f64);
        for (&l, &p) in segmentation.labels.iter().zip(&segmentation.probability) {
            if l == 0 {
                continue;
            }
            if let Some(t) = space.task_of(l) {
                *voxels_per_task
                    .get_mut(&space.tasks[t].name)
                    .expect("every task listed") += 1;
            }
            labelled += 1;
            low_confidence += usize::from(p < LOW_PROBABILITY);
            foreground_probability += p as f64;
        }
        let mean_probability = segmentation.probability.iter().sum::<f32>()
            / segmentation.probability.len().max(1) as f32;
        let joint = preprocess::restore_labels(segmentation.labels, &prepared);
        // Dataset ids when one task is clear, joint ids otherwise.
        let (values, label_values, labels): (Vec<u16>, _, BTreeMap<u16, String>) =
            match segmentation.task {
                Some(t) => (
                    joint.iter().map(|&j| space.dataset_id(j)).collect(),
                    "dataset",
                    std::iter::once((0, "background".to_string()))
                        .chain(
                            meta.tasks[t]
                                .classes
                                .iter()
                                .map(|(name, id)| (*id, name.clone())),
                        )
                        .collect(),
                ),
                None => (
                    joint,
                    "joint",
                    (0..space.num_classes() as u16)
                        .map(|j| (j, space.joint_name(j)))
                        .collect(),
                ),
            };
        let label_map: LabelMap = image.with_data(values);
        let ids: Vec<u16> = labels.keys().copied().filter(|&id| id > 0).collect();
        let volumes_ml: BTreeMap<String, f64> = ids
            .iter()
            .zip(label_map.volumes_ml(&ids))
            .map(|(id, ml)| (labels[id].clone(), ml))
            .collect();
        let mean_intensity = mean_intensities(image, &label_map, &labels);
        let probabilities = want_probabilities.then(|| {
            image.with_data(preprocess::restore_values(
                segmentation.probability,
                &prepared,
            ))
        });
        let recognition = segmentation.recognition.as_ref().map(|r: &Recognition| {
            let tried = choice.recognition.as_deref().unwrap_or_default();
            RecognitionReport {
                task: meta.tasks[r.task].name.clone(),
                confidence: r.mean_probabilities[r.task],
                probabilities: tried
                    .iter()
                    .map(|&t| (meta.tasks[t].name.clone(), r.mean_probabilities[t]))
                    .collect(),
            }
        });
        let task_name = segmentation.task.map_or_else(
            || "several tasks".to_string(),
            |t| meta.tasks[t].name.clone(),
        );
        let quality = quality::verdict(&Evidence {
            task: &task_name,
            expected: segmentation
                .task
                .and_then(|t| meta.tasks[t].expected.as_ref()),
            recognition: recognition
                .as_ref()
                .map(|r| (r.confidence, &r.probabilities)),
            unlike_every_task: choice.unlike_every_task,
            volumes_ml: &volumes_ml,
            extent_mm: image.grid.largest_extent_mm(),
            low_confidence_share: low_confidence as f64 / labelled.max(1) as f64,
            foreground_found,
        });
        let summary = Summary {
            task: segmentation.task.map(|t| meta.tasks[t].name.clone()),
            label_values,
            labels,
            task_selection: choice.selection,
            mirrored_left_right: self
                .mirrored_tasks
                .iter()
                .map(|&t| meta.tasks[t].name.clone())
                .collect(),
            recognition,
            volumes_ml,
            mean_intensity,
            voxels_per_task,
            postprocessing: (!postprocessed.is_empty()).then(|| {
                postprocessed
                    .iter()
                    .map(|&t| format!("{}: largest connected object", meta.tasks[t].name))
                    .collect()
            }),
            voxels_removed_by_postprocessing: removed,
            mean_probability,
            mean_foreground_probability: (foreground_probability / labelled.max(1) as f64) as f32,
            quality,
        };
        Segmentation {
            labels: label_map,
            probabilities,
            summary,
        }
    }
}

/// A scan prepared for one spacing and the network's first look at it.
struct Look {
    preprocessing: Preprocessing,
    prepared: Prepared,
    sampled: Sampled,
}

/// A network-layout segmentation with the preprocessing that made it.
struct Run {
    segmentation: NetworkLabels,
    prepared: Prepared,
    /// For tasks normalised over their foreground: the foreground voxels the first look found.
    foreground_found: Option<usize>,
}

/// How the task was chosen.
struct Choice {
    selection: &'static str,
    /// The tasks the task head was asked about.
    recognition: Option<Vec<usize>>,
    unlike_every_task: bool,
}

impl Choice {
    fn given() -> Choice {
        Choice {
            selection: "given",
            recognition: None,
            unlike_every_task: false,
        }
    }
}

/// What segmenting one scan gives, on the scan's own grid.
pub struct Segmentation {
    /// Label values as `summary.label_values` says.
    pub labels: LabelMap,
    /// The winning class's probability per voxel, when asked for.
    pub probabilities: Option<Image>,
    pub summary: Summary,
}

/// What a segmentation is (the sidecar's content besides the files).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The task whose classes the labels belong to, when a single one is clear.
    pub task: Option<String>,
    /// `"dataset"`: values are the task's own dataset.json ids; `"joint"`: values are the
    /// model's joint label space (background 0, then every task's classes).
    pub label_values: &'static str,
    /// Label value -> class name, for every value the output can hold.
    pub labels: BTreeMap<u16, String>,
    /// How the task was chosen: `given` (--task), `network` (the union softmax decided every
    /// voxel), or `task head` (per-task output mode).
    pub task_selection: &'static str,
    /// Tasks whose classes averaged a pass over the scan mirrored left-right (test-time
    /// augmentation, `--mirror`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrored_left_right: Vec<String>,
    pub recognition: Option<RecognitionReport>,
    /// Per class name: its volume on the scan's grid (ml), after post-processing.
    pub volumes_ml: BTreeMap<String, f64>,
    /// Per class name present: the scan's mean intensity over its voxels.
    pub mean_intensity: BTreeMap<String, f64>,
    /// Voxels given a class of each task (joint decisions, on the model's grid), by task name.
    pub voxels_per_task: BTreeMap<String, usize>,
    /// What was done to the network's labels before they were written, per task (`None`:
    /// nothing).
    pub postprocessing: Option<Vec<String>>,
    /// Voxels (on the model's grid) that post-processing set to background.
    pub voxels_removed_by_postprocessing: usize,
    /// Mean probability of the winning class over all voxels, before post-processing.
    pub mean_probability: f32,
    /// The same over the labelled voxels.
    pub mean_foreground_probability: f32,
    /// Whether the segmentation is likely right, and what speaks against it.
    pub quality: Quality,
}

/// What `segment` did with one file (also written as the JSON sidecar).
#[derive(Clone, Debug, Serialize)]
pub struct SegmentReport {
    pub input: PathBuf,
    /// The DICOM series segmented (SeriesInstanceUID), for a DICOM input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<String>,
    pub output: PathBuf,
    pub model: PathBuf,
    #[serde(flatten)]
    pub summary: Summary,
    pub seconds: f64,
    pub written_by: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct RecognitionReport {
    pub task: String,
    /// The task head's mean probability of the chosen task, at its spacing.
    pub confidence: f32,
    /// The same for every task it was asked about.
    pub probabilities: BTreeMap<String, f32>,
}

/// Where the sidecar of an output goes: `seg.nii.gz` -> `seg.json`.
pub fn sidecar_path(output: &Path) -> PathBuf {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name
        .strip_suffix(".nii.gz")
        .or_else(|| name.strip_suffix(".nii"))
        .unwrap_or(&name);
    output.with_file_name(format!("{stem}.json"))
}

/// CT images hold Hounsfield units: air at -1000. MR intensities are never that negative.
fn looks_like_ct(image: &Image) -> bool {
    percentiles(&image.data, &[1.0])[0] < -500.0
}

fn mean_foreground_probability(s: &NetworkLabels) -> f32 {
    let (sum, n) = s
        .labels
        .iter()
        .zip(&s.probability)
        .filter(|(l, _)| **l > 0)
        .fold((0f64, 0usize), |(a, n), (_, p)| (a + *p as f64, n + 1));
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// The mean of `image` over the voxels of each class of `names` present in `labels`.
fn mean_intensities(
    image: &Image,
    labels: &LabelMap,
    names: &BTreeMap<u16, String>,
) -> BTreeMap<String, f64> {
    let mut sums: BTreeMap<u16, (f64, usize)> = BTreeMap::new();
    for (&l, &v) in labels.data.iter().zip(&image.data) {
        if l > 0 {
            let s = sums.entry(l).or_default();
            s.0 += v as f64;
            s.1 += 1;
        }
    }
    sums.into_iter()
        .filter_map(|(l, (sum, n))| names.get(&l).map(|name| (name.clone(), sum / n as f64)))
        .collect()
}

/// The task head's probabilities averaged over the voxels looked at inside the body of
/// `image` (the prepared image the look ran on; all voxels looked at if none is): air says
/// nothing about the task, and a skull-stripped scan is mostly air.
fn mean_task_probabilities(sampled: &Sampled, image: &[f32], tasks: usize) -> Vec<f32> {
    if sampled.task_logits.is_empty() || sampled.voxels.is_empty() {
        return vec![0.0; tasks];
    }
    let looked_at: Vec<f32> = sampled.voxels.iter().map(|&v| image[v]).collect();
    let threshold = body_threshold(&looked_at);
    let in_body = |value: f32| value > threshold;
    let anywhere = !looked_at.iter().any(|&v| in_body(v));
    let mut sums = vec![0f64; tasks];
    let mut n = 0usize;
    for (&value, voxel) in looked_at
        .iter()
        .zip(sampled.task_logits.chunks_exact(tasks))
    {
        if anywhere || in_body(value) {
            for (sum, p) in sums.iter_mut().zip(task_probabilities(voxel)) {
                *sum += p as f64;
            }
            n += 1;
        }
    }
    sums.iter().map(|s| (s / n as f64) as f32).collect()
}

/// Segments one image file into `output`, writes the sidecar (and the probability map when
/// asked) and returns the report.
pub fn segment_file(
    segmenter: &Segmenter,
    input: &Path,
    output: &Path,
    probabilities: Option<&Path>,
) -> Result<SegmentReport> {
    let started = Instant::now();
    let image = io::read_image(input)?;
    let source = Source {
        input,
        series: None,
        started,
    };
    Ok(segment_and_write(segmenter, &image, &source, output, probabilities)?.0)
}

/// Where an image came from: its file or folder, and its series in a DICOM input.
pub struct Source<'a> {
    pub input: &'a Path,
    pub series: Option<&'a str>,
    /// When reading it began.
    pub started: Instant,
}

/// Segments `image` into `output`, writes the sidecar (and the probability map when asked),
/// and returns the report and the label map.
pub fn segment_and_write(
    segmenter: &Segmenter,
    image: &Image,
    source: &Source,
    output: &Path,
    probabilities: Option<&Path>,
) -> Result<(SegmentReport, LabelMap)> {
    let segmented = segmenter
        .segment_image(image, probabilities.is_some())
        .map_err(|e| Error::invalid(source.input, e.to_string()))?;
    io::write_labels(output, &segmented.labels)?;
    if let (Some(path), Some(map)) = (probabilities, &segmented.probabilities) {
        io::write_image(path, map)?;
    }
    let report = SegmentReport {
        input: source.input.to_path_buf(),
        series: source.series.map(String::from),
        output: output.to_path_buf(),
        model: segmenter.source.clone(),
        summary: segmented.summary,
        seconds: source.started.elapsed().as_secs_f64(),
        written_by: format!("mtseg {}", env!("CARGO_PKG_VERSION")),
    };
    io::atomic::write_json(&sidecar_path(output), &report)?;
    Ok((report, segmented.labels))
}
