"""Object stores: one module per store, all behind the small interface in `base`."""
