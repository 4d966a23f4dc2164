//! Shared synthetic-cloud builders for the benchmarks and the demo.
