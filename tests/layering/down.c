/* See up.c. */
void bp_layer_up(int n);
void bp_layer_down(int n);
void bp_layer_down(int n) {
  if (n > 0) bp_layer_up(n - 1);
}
