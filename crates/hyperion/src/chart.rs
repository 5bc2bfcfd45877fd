//! Shared chart set-up: plotters' `ab_glyph` text backend with an embedded font, so PNG
//! output needs no system font libraries. DejaVu Sans (Bitstream Vera licence, see
//! `assets/DejaVuSans-LICENSE.txt`).

use std::sync::Once;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Registers the embedded font as "sans-serif" (once per process).
pub fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bytes are a valid TrueType font shipped with the binary; failure here is a
        // build defect, not user input.
        if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, FONT).is_err() {
            panic!("embedded font failed to load");
        }
    });
}
