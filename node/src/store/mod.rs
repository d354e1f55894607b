//! Durable, fenced storage of documents (`DocumentStore`).
