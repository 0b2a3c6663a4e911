# cmake -DINPUT=file -DOUTPUT=file.cpp -P EmbedText.cmake
# Emits shunt::config::builtin_default_yaml() returning INPUT's text.
file(READ ${INPUT} content HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${content}")
file(WRITE ${OUTPUT}
"#include <string_view>\nnamespace shunt::config {\nnamespace { const char kText[] = {${bytes} 0}; }\n"
"std::string_view builtin_default_yaml() { return {kText, sizeof(kText) - 1}; }\n}\n")
