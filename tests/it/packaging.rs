//! The container files (tests to come).
