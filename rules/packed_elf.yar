/*
 * UPX-packed ELF executables. Packing hides a binary's code from static inspection and is
 * common in Linux malware (miners, IoT bots); distribution packages do not ship UPX-packed
 * binaries. UPX writes its "UPX!" magic in the loader info right after the program headers
 * and again in the pack header near the end of the file.
 */

rule Linux_Packed_UPX_ELF
{
    meta:
        author = "onaccess"
        description = "ELF executable packed with UPX"
        severity = "medium"
        reference = "https://upx.github.io/"

    strings:
        $magic = "UPX!" ascii
        $info = "$Info: This file is packed with the UPX executable packer" ascii
        $id = "$Id: UPX " ascii

    condition:
        uint32(0) == 0x464c457f and filesize < 64MB and
        $magic in (0 .. 1024) and
        ($magic in (filesize - 4096 .. filesize) or $info or $id)
}
