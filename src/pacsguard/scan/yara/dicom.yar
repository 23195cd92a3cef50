/*
 * pacsguard's built-in YARA rules for DICOM files (docs/scan.md). Written for pacsguard; each rule
 * names its level and the standard or advisory it rests on. They run over the whole file, over
 * each element value that may carry a payload, and over each encapsulated document.
 */

private rule pacsguard_part10
{
    condition:
        filesize > 132 and uint32(128) == 0x4D434944  // "DICM" after the 128-byte preamble (PS3.10 7.1)
}

rule pacsguard_preamble_pe
{
    meta:
        level = "critical"
        reference = "PS3.10 7.1; CVE-2019-11687"
        description = "the preamble is a PE executable (MZ, with the PE header wherever e_lfanew points)"
    condition:
        pacsguard_part10 and uint16(0) == 0x5A4D and uint32(0x3C) < filesize - 4
        and uint32(uint32(0x3C)) == 0x00004550
}

rule pacsguard_preamble_elf
{
    meta:
        level = "high"
        reference = "PS3.10 7.1; System V ABI 4.1"
        description = "the preamble is an ELF executable"
    condition:
        // e_ident as written (class, data, version 1), or what Linux's loader checks instead:
        // e_type and e_machine (x86, x86-64, ARM, AArch64, RISC-V), whatever the version byte says
        pacsguard_part10 and uint32(0) == 0x464C457F and ((uint8(4) <= 2 and uint8(6) == 1)
        or (uint16(16) >= 1 and uint16(16) <= 4 and (uint16(18) == 3 or uint16(18) == 0x3E
        or uint16(18) == 0x28 or uint16(18) == 0xB7 or uint16(18) == 0xF3)))
}

rule pacsguard_preamble_macho
{
    meta:
        level = "high"
        reference = "PS3.10 7.1; mach-o/loader.h"
        description = "the preamble is a Mach-O executable (either byte order, or fat)"
    condition:
        pacsguard_part10 and (uint32(0) == 0xFEEDFACE or uint32(0) == 0xFEEDFACF or uint32(0) == 0xCEFAEDFE
        or uint32(0) == 0xCFFAEDFE or (uint32be(0) == 0xCAFEBABE and uint32be(4) > 0 and uint32be(4) <= 8))
}

rule pacsguard_preamble_script
{
    meta:
        level = "high"
        reference = "PS3.10 7.1"
        description = "the preamble holds a script or markup"
    strings:
        $shebang = "#!/"
        $ps = "powershell" nocase
        $bat = "@echo off" nocase
        $html = "<html" nocase
        $script = "<script" nocase
        $php = "<?php" nocase
        $php_echo = "<?="
    condition:
        pacsguard_part10 and ($shebang at 0 or any of ($ps, $bat, $html, $script, $php, $php_echo) in (0..127))
}

rule pacsguard_preamble_json
{
    meta:
        level = "high"
        reference = "PS3.10 7.1; CVE-2023-33466"
        description = "the preamble holds JSON configuration text"
    condition:
        // conditions only, no strings: nothing to search for in the rest of the file
        pacsguard_part10 and uint8(0) == 0x7B and for any i in (1..16) : (uint8(i) == 0x22)
        and for any j in (2..64) : (uint8(j) == 0x3A)
}

rule pacsguard_embedded_elf
{
    meta:
        level = "high"
        reference = "PS3.5 6.2"
        description = "an ELF header inside the data set"
    strings:
        $elf = { 7F 45 4C 46 (01 | 02) (01 | 02) 01 }
        // what Linux's loader checks instead of e_ident's version: e_type and e_machine
        $loadable = { 7F 45 4C 46 [12] (02 | 03) 00 (03 | 3E | 28 | B7 | F3) 00 }
    condition:
        pacsguard_part10 and ($elf in (132..filesize) or $loadable in (132..filesize))
}

rule pacsguard_embedded_pe
{
    meta:
        level = "high"
        reference = "PS3.5 6.2"
        description = "a PE header (signature and an x86, x64 or ARM64 machine) inside the data set"
    strings:
        // the PE header, not "MZ": two bytes are everywhere in pixel data, six are not
        $pe = { 50 45 00 00 ( 4C 01 | 64 86 | 64 AA ) }
    condition:
        pacsguard_part10 and $pe in (132..filesize)
}

rule pacsguard_appended_zip
{
    meta:
        level = "high"
        reference = "PS3.10 7.1; APPNOTE 4.3.16"
        description = "a zip archive's end of central directory near the end of a DICOM file"
    strings:
        $eocd = { 50 4B 05 06 }
    condition:
        pacsguard_part10 and $eocd in (filesize - 65557..filesize)
}

rule pacsguard_pdf_active
{
    meta:
        level = "high"
        reference = "ISO 32000-1 12.6; PS3.3 A.45"
        description = "a PDF with JavaScript, launch actions, rich media or embedded files"
    strings:
        $pdf = "%PDF-"
        $js = "/JavaScript"
        $js2 = "/JS"
        $launch = "/Launch"
        $embedded = "/EmbeddedFile"
        $rich = "/RichMedia"
    condition:
        // /OpenAction alone is where to open (a page), as report writers set: not matched.
        $pdf and any of ($js, $js2, $launch, $embedded, $rich)
}

rule pacsguard_xml_external_entity
{
    meta:
        level = "high"
        reference = "XML 1.0 4.2.2, 2.8"
        description = "an XML document declaring an external entity or naming an external DTD"
    strings:
        // XML 1.0 2.3 Name: any bytes but white space and the delimiters around it ("a:b", UTF-8
        // letters); the same pattern as XML_EXTERNAL in rules/documents.py
        $entity = /<!ENTITY\s+(%\s*)?[^\s<>"'%]+\s+(SYSTEM|PUBLIC)/ nocase
        $dtd = /<!DOCTYPE\s+[^\s<>"'%]+\s+(SYSTEM|PUBLIC)/ nocase
        // An HTML or XHTML page's DOCTYPE (a patient CD's index.htm) with the W3C's PUBLIC
        // identifier and none but the W3C's system identifier: browsers never fetch its DTD.
        // "html SYSTEM url", or a W3C public identifier before another system one, is no longer exempt.
        $html = /<!DOCTYPE\s+html\s+PUBLIC\s+["']-\/\/W3C\/\/DTD\s[^"'>]*["'](\s+["']https?:\/\/www\.w3\.org\/[^"'>]*["'])?\s*[\[>]/ nocase
    condition:
        $entity or ($dtd and not $html)
}

rule pacsguard_xml_xinclude
{
    meta:
        level = "high"
        reference = "XInclude 1.0 4.1; XML 1.0 4.2.2"
        description = "an XML document with an XInclude include, which an XInclude processor reads into it"
    strings:
        // A prefix (or the default namespace) bound to XInclude's namespace (or libxml2's 2003
        // draft one), and an include element; documents.xml-external-reference in rules/documents.py
        // ties the element to the prefix.
        $ns = /xmlns(:[^\s<>"'%:=\/]{1,256})?\s*=\s*["']http:\/\/www\.w3\.org\/200[13]\/XInclude["']/
        $include = /<([^\s<>"'%:=\/]{1,256}:)?include[\s\/>]/
    condition:
        $ns and $include
}

rule pacsguard_markup
{
    meta:
        level = "high"
        reference = "PS3.5 6.2; OWASP stored XSS"
        description = "script markup in a DICOM file, run by web viewers that show its text"
    strings:
        $script = "<script" nocase
        $onerror = /\bonerror\s*=/ nocase
        $js = "javascript:" nocase
    condition:
        pacsguard_part10 and any of them
}
