//! The order domain.
