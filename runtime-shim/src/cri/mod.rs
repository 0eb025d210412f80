//! The CRI v1 gRPC services: thin adapters from protobuf requests to the runtime's own
//! types. No logic that is not about the wire format belongs here.
pub mod image_service;
pub mod runtime_service;
pub mod server;
