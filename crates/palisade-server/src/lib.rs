//! palisade-server library
