//! palisade-providers
