/* With down.c: two files that call each other, a cycle check_layers.py must
 * refuse (the layering_refuses_a_cycle test). */
void bp_layer_up(int n);
void bp_layer_down(int n);
void bp_layer_up(int n) {
  if (n > 0) bp_layer_down(n - 1);
}
