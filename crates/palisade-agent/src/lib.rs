//! palisade-agent library
