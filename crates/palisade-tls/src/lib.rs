//! palisade-tls
