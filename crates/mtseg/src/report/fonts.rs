//! The font of every picture mtseg draws, embedded (DejaVu Sans): plots render the same on a
//! machine without any installed fonts.

use std::sync::Once;

use plotters::style::FontStyle;

static REGISTER: Once = Once::new();

/// Registers DejaVu Sans as plotters' "sans-serif" (once per process).
pub fn register() {
    REGISTER.call_once(|| {
        for (style, bytes) in [
            (FontStyle::Normal, dejavu::sans::regular()),
            (FontStyle::Bold, dejavu::sans::bold()),
        ] {
            // The embedded font is valid; a failure would only mean text-less plots.
            let _ = plotters::style::register_font("sans-serif", style, bytes);
        }
    });
}
