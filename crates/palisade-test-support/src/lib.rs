//! palisade-test-support
