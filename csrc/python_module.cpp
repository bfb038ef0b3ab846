// Makes the library importable as the Python module fastgan._C; importing it runs the TORCH_LIBRARY
// registrations. Ops are reached through torch.ops.fastgan, so the module itself is empty.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
