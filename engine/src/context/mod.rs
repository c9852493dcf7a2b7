//! Build context: ignore rules, file index, hashing.
