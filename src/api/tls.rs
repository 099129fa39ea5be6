//! The client certificate of a call, as a principal.
//!
//! Without TLS on the API listener no call carries a verified certificate,
//! so [`certificate_principal`] names none.

use tonic::Request;

/// The verified client certificate's subject (URI SAN, else CN), if the
/// call came over mutual TLS.
pub fn certificate_principal<T>(_request: &Request<T>) -> Option<String> {
    None
}
