//! The one way a wire enum (a code in a map entry or an event record) is declared.

/// Declares a `#[repr(u8)]` enum whose discriminants are its wire codes, listing each
/// variant once with its code and its name. Generated with it:
///
/// - `ALL`, every variant in declaration order;
/// - `from_code`, the decoder: `None` for a code no variant has;
/// - a `const fn` (named by the `fn` line after the enum) from a variant to its name.
macro_rules! wire_enum {
    (
        $(#[$enum_meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $code:literal => $word:literal,
            )+
        }
        $(#[$name_fn_meta:meta])*
        fn $name_fn:ident;
    ) => {
        $(#[$enum_meta])*
        #[repr(u8)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $(
                $(#[$variant_meta])*
                $variant = $code,
            )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: [Self; [$($code),+].len()] = [$(Self::$variant),+];

            /// Decodes a wire code; `None` for a code no variant has.
            pub const fn from_code(code: u8) -> Option<Self> {
                match code {
                    $($code => Some(Self::$variant),)+
                    _ => None,
                }
            }

            $(#[$name_fn_meta])*
            pub const fn $name_fn(self) -> &'static str {
                match self {
                    $(Self::$variant => $word,)+
                }
            }
        }
    };
}

pub(crate) use wire_enum;
