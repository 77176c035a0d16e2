//! Reading and writing a person's records in bulk (export, import).
