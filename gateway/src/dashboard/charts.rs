//! SVG charts (to be built).
