//! Macros shared by the modules that define numeric code sets.

/// Defines a newtype over an integer with named constants, a list of all of
/// them, their Rust and kernel names, and `Debug`/`Display` that print the
/// name (or the number for values this crate does not know).
///
/// A newtype rather than an enum so that unknown values survive parsing
/// unchanged: a newer kernel may send codes this crate has no name for.
macro_rules! code_newtype {
    (
        $(#[$meta:meta])*
        $name:ident($repr:ty), kernel prefix $prefix:literal {
            $(
                $(#[$cmeta:meta])*
                $code:ident = $value:literal $(=> $cname:literal)?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub $repr);

        impl $name {
            $(
                $(#[$cmeta])*
                #[doc = concat!(
                    "\n\nKernel name: `",
                    code_newtype!(@kernel_name $prefix, $code $(, $cname)?),
                    "` (", stringify!($value), ")."
                )]
                pub const $code: $name = $name($value);
            )*

            /// Every named value, in the order of the kernel header.
            pub const ALL: &'static [$name] = &[$($name::$code),*];

            /// The Rust name (the kernel's without its prefix), or `None` if unknown.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($code)),)*
                    _ => None,
                }
            }

            /// The kernel's full name (e.g. `FUSE_LOOKUP`), or `None` if unknown.
            pub const fn kernel_name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(code_newtype!(@kernel_name $prefix, $code $(, $cname)?)),)*
                    _ => None,
                }
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                match self.name() {
                    Some(name) => f.write_str(name),
                    None => write!(f, "{}({})", stringify!($name), self.0),
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                core::fmt::Debug::fmt(self, f)
            }
        }
    };
    (@kernel_name $prefix:literal, $code:ident) => {
        concat!($prefix, stringify!($code))
    };
    (@kernel_name $prefix:literal, $code:ident, $cname:literal) => {
        $cname
    };
}
