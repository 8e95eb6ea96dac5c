//! What `aegis demo`, `aegis upstream` and `aegis token` need, and the gateway does not: the
//! demo's six upstreams and config, the fake upstream service (the demo's, the compose
//! file's and the end-to-end tests'), and an HS256 token minter. Behind the `dev` cargo
//! feature (on by default): a build without it ships the gateway alone.

pub mod demo;
pub mod token;
pub mod upstream;
