//! palisade-spool
