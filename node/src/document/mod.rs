//! The document: cells, their static analysis and the reactive cell graph (sans-IO cores), and
//! later the document actor that owns them beside the kernel.
