//! Client-side encryption with age (tests to come).
