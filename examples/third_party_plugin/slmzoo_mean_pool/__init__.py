"""An example slmzoo plugin: the ``mean_pool`` adapter and the ``salm_mean_pool`` card."""
