//! palisade-guard
