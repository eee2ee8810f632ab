//! Offline tools for a stopped store (placeholder; filled in below).
