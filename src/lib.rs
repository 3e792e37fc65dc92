//! npd
