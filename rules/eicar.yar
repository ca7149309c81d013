/*
 * EICAR anti-malware test file. Matched the way AV products do: the 68-byte string at the
 * start of the file, optionally followed by whitespace, 128 bytes at most in total.
 */

rule EICAR_Test_File
{
    meta:
        author = "onaccess"
        description = "EICAR anti-malware test file (harmless test signature)"
        severity = "low"
        reference = "https://www.eicar.org/download-anti-malware-testfile/"

    strings:
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

    condition:
        $eicar at 0 and filesize <= 128 and
        (
            filesize == 68 or
            // only blanks may follow: space, tab, LF, CR, Ctrl-Z (DOS end of file)
            for all i in (68 .. filesize - 1) : (
                uint8(i) == 0x20 or uint8(i) == 0x09 or uint8(i) == 0x0a or
                uint8(i) == 0x0d or uint8(i) == 0x1a
            )
        )
}
