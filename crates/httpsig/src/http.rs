//! Adapters for `http::Request` / `http::Response` (feature `http`).
