"""TFRecord encode/parse from the schema, the tf.data input pipeline and the planted data generator."""
