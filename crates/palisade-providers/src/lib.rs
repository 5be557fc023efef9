//! Provider adapters: turn AI provider HTTP bodies (OpenAI, Anthropic, Gemini
//! and the OpenAI-compatible family) into the audit fields of an interaction
//! record, decode compressed bodies, and price token usage.
//!
//! This crate is a pure library. It must never do I/O, never panic on any
//! input (bodies are untrusted bytes from apps and upstreams), and never
//! modify what the proxy forwards: it only ever reads copies.
//!
//! Usage normalisation (the same for every format, see [`ParsedResponse`]):
//! `input_tokens` counts *all* input tokens, including cached reads and
//! cache writes; `cached_input_tokens` is the cached-read subset;
//! `output_tokens` counts *all* output tokens including reasoning;
//! `reasoning_tokens` is the reasoning subset.

mod decode;
mod endpoint;
mod formats;
mod json;
mod price;
mod request;
mod response;
mod stream;

pub use decode::{BodyDecoder, DecodeError, DEFAULT_DECODE_LIMIT};
pub use endpoint::{classify, ApiFormat, Endpoint};
pub use price::{ModelPrice, PriceError, PriceTable};
pub use request::{parse_request, ParsedRequest};
pub use response::{parse_response, ParsedResponse};
pub use stream::{StreamParser, DEFAULT_MAX_LINE, DEFAULT_MAX_TEXT};
