//! Stage 8, report: pictures and tables for people: slice overlays, montages, plots.

pub mod fonts;
pub mod overlay;
